"""Synthetic compositional skills: the embedded default family (no download).

A pool of primitive string skills (reverse, sort, caesar, ...). Each task
applies an ordered composition of distinct skills (two by default) to random
lowercase strings. The input is only the string: the model must infer the
task from its task id, which is what routing over a skill inventory is for.

Held-out tasks test skill *recombination*: every skill of a held-out task is
used by some training task, but no training task uses the same set of skills
(in any order), and no two tasks compute the same function (checked on probe
strings, so e.g. `uppercase` then `reverse` and `reverse` then `uppercase`
cannot both appear). Everything is deterministic given `SyntheticSpec.seed`.

Registered (default spec): `synthetic_<skill>_then_<skill>` per task, the
mixture `synthetic_train` (equal rates over the training tasks), and few-shot
tasks `<held-out task>_k<k>_s<seed>`. Task ids: training tasks 0..n_train-1,
held-out tasks after them (`task_id_table('synthetic')`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
import string
from typing import Callable, Optional

import seqio

from tasks import fewshot, metrics, mixtures, registry, sources

FAMILY = "synthetic"
TRAIN_MIXTURE = "synthetic_train"
_VOWELS = set("aeiouAEIOU")


def _caesar(s: str) -> str:
  """Each letter -> the next one (z -> a), case kept."""
  out = []
  for c in s:
    if c.islower():
      out.append(chr((ord(c) - 97 + 1) % 26 + 97))
    elif c.isupper():
      out.append(chr((ord(c) - 65 + 1) % 26 + 65))
    else:
      out.append(c)
  return "".join(out)


def _swap_pairs(s: str) -> str:
  """'abcde' -> 'badce' (the last char of an odd-length string stays)."""
  chars = list(s)
  for i in range(0, len(chars) - 1, 2):
    chars[i], chars[i + 1] = chars[i + 1], chars[i]
  return "".join(chars)


SKILLS: dict[str, Callable[[str], str]] = {
    "reverse": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
    "caesar": _caesar,
    "duplicate": lambda s: "".join(c + c for c in s),
    "uppercase": str.upper,
    "drop_vowels": lambda s: "".join(c for c in s if c not in _VOWELS),
    "swap_pairs": _swap_pairs,
    "rotate": lambda s: s[1:] + s[:1],
}


def apply_skills(composition: tuple[str, ...], s: str) -> str:
  """Applies the skills left to right: ('reverse', 'caesar') reverses, then shifts."""
  for skill in composition:
    s = SKILLS[skill](s)
  return s


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Size and seed of the synthetic family.

  Defaults fit a tiny T5 on 2 CPU cores: inputs <= 9 byte tokens, targets
  <= 17 (incl. EOS), 24 training tasks learnable in a few minutes.
  """
  n_skills_pool: int = 8
  composition_length: int = 2
  n_train_tasks: int = 24
  n_heldout_tasks: int = 8
  n_train_examples: int = 2000
  n_validation_examples: int = 100
  n_test_examples: int = 200
  min_length: int = 3
  max_length: int = 8
  seed: int = 0
  fewshot_ks: tuple = (16, 32)
  fewshot_seeds: tuple = (0, 1, 2)

  def sequence_length(self) -> dict[str, int]:
    """Byte-token lengths that hold every example (EOS included)."""
    # `duplicate` doubles the length; a composition uses each skill at most once.
    growth = 2 if "duplicate" in list(SKILLS)[:self.n_skills_pool] else 1
    return {"inputs": self.max_length + 1, "targets": growth * self.max_length + 1}


def task_name(composition: tuple[str, ...]) -> str:
  return "synthetic_" + "_then_".join(composition)


def _random_string(rng: random.Random, spec: SyntheticSpec) -> str:
  n = rng.randint(spec.min_length, spec.max_length)
  return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


@functools.lru_cache(maxsize=8)
def compositions(spec: SyntheticSpec) -> tuple[tuple, tuple]:
  """(training compositions, held-out compositions), deterministic in spec.seed."""
  if not 1 <= spec.n_skills_pool <= len(SKILLS):
    raise ValueError(f"n_skills_pool must be in 1..{len(SKILLS)}, got {spec.n_skills_pool}")
  skills = list(SKILLS)[:spec.n_skills_pool]
  rng = random.Random(f"synthetic-compositions-{spec.seed}")
  probes = [_random_string(rng, spec) for _ in range(64)]
  for _ in range(100):
    candidates = list(itertools.permutations(skills, spec.composition_length))
    rng.shuffle(candidates)
    seen_functions: set = set()
    heldout, heldout_sets = [], set()
    for comp in candidates:
      function = tuple(apply_skills(comp, p) for p in probes)
      if len(heldout) < spec.n_heldout_tasks and frozenset(comp) not in heldout_sets \
          and function not in seen_functions:
        heldout.append(comp)
        heldout_sets.add(frozenset(comp))
        seen_functions.add(function)
    train = []
    for comp in candidates:
      function = tuple(apply_skills(comp, p) for p in probes)
      if len(train) < spec.n_train_tasks and frozenset(comp) not in heldout_sets \
          and function not in seen_functions:
        train.append(comp)
        seen_functions.add(function)
    train_skills = {s for comp in train for s in comp}
    if (len(heldout) == spec.n_heldout_tasks and len(train) == spec.n_train_tasks
        and all(s in train_skills for comp in heldout for s in comp)):
      return tuple(train), tuple(heldout)
  raise ValueError(
      f"cannot draw {spec.n_train_tasks} training + {spec.n_heldout_tasks} held-out distinct "
      f"compositions of {spec.composition_length} from {spec.n_skills_pool} skills with every "
      "held-out skill seen in training; lower the task counts or enlarge the pool")


@functools.lru_cache(maxsize=64)
def task_examples(spec: SyntheticSpec, composition: tuple[str, ...]) -> dict[str, tuple]:
  """{split: ((input, target), ...)}: distinct input strings, disjoint across splits."""
  rng = random.Random(f"synthetic-examples-{spec.seed}-{task_name(composition)}")
  sizes = {"train": spec.n_train_examples, "validation": spec.n_validation_examples,
           "test": spec.n_test_examples}
  total = sum(sizes.values())
  seen, pairs = set(), []
  for _ in range(50 * total):
    if len(pairs) == total:
      break
    s = _random_string(rng, spec)
    target = apply_skills(composition, s)
    if s in seen or not target:  # e.g. drop_vowels of 'aei'
      continue
    seen.add(s)
    pairs.append((s, target))
  if len(pairs) < total:
    raise ValueError(f"{task_name(composition)}: only {len(pairs)} distinct strings of length "
                     f"{spec.min_length}..{spec.max_length}; asked for {total}")
  out, start = {}, 0
  for split, n in sizes.items():
    out[split] = tuple(pairs[start:start + n])
    start += n
  return out


def _load_split(spec: SyntheticSpec, composition: tuple[str, ...], split: str) -> list[dict]:
  return [sources.generative_record(x, [y]) for x, y in task_examples(spec, composition)[split]]


def training_texts(spec: SyntheticSpec) -> list[str]:
  """Inputs and targets of every training example (e.g. to train a SentencePiece model)."""
  train, _ = compositions(spec)
  return [t for comp in train for pair in task_examples(spec, comp)["train"] for t in pair]


def register_synthetic(spec: SyntheticSpec = SyntheticSpec(),
                       vocabulary: Optional[seqio.Vocabulary] = None) -> registry.Family:
  """Registers the family (replacing an earlier registration) and returns it."""
  registry.remove_family(FAMILY)
  train, heldout = compositions(spec)
  names = [task_name(c) for c in train + heldout]
  for task_id, (comp, name) in enumerate(zip(train + heldout, names)):
    registry.add_task(registry.TaskSpec(
        name=name, family=FAMILY, role="train" if task_id < len(train) else "heldout",
        kind=sources.GENERATIVE,
        source=sources.records_source(functools.partial(_load_split, spec, comp),
                                      sources.GENERATIVE),
        task_id=task_id, metric_fns=(metrics.exact_match_metric,),
        metric_names=("exact_match",)), vocabulary=vocabulary)
  fam = registry.Family(FAMILY, names[:len(train)], names[len(train):], TRAIN_MIXTURE,
                        sequence_length=spec.sequence_length())
  registry.set_family(fam)
  mixtures.register_mixture(TRAIN_MIXTURE, FAMILY, fam.train_tasks, scheme="equal")
  for name in fam.heldout_tasks:
    for k in spec.fewshot_ks:
      for seed in spec.fewshot_seeds:
        fewshot.register_fewshot_task(name, k, seed)
  return fam
