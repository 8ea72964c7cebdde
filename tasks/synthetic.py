"""Synthetic compositional skills: the embedded default family (no download).

The alphabet a..x is split into eight groups of three letters; primitive skill
`up_<group>` upper-cases the letters of its group and copies everything else
(`up_abc`: 'cabbie' -> 'CABBie'). A task applies a set of distinct skills
(three by default) to random lowercase strings, so its output is the input
with the union of its groups upper-cased ('y' and 'z' belong to no group and
are always copied). A skill is a small, self-contained unit (three letter
mappings on top of a shared copy), the skills of a task act on disjoint
letters, so a task is exactly the sum of its skills: the setting in which
routing over a skill inventory should recover which tasks share which skills.

The input is only the string: the model must infer the task from its task
id, which is what routing is for. Held-out tasks test skill *recombination*:
every skill of a held-out task is used by some training task, but no training
task uses the same set. `skill_matrix` gives the ground truth (task x skill)
that `mhr_jax.evaluation.routing_recovery` scores learned routing against.
Everything is deterministic given `SyntheticSpec.seed`.

Registered (default spec): `synthetic_<skill>_then_<skill>_then_<skill>` per
task (skills in pool order), the mixture `synthetic_train` (equal rates over
the training tasks), and few-shot tasks `<held-out task>_k<k>_s<seed>`. Task
ids: training tasks 0..n_train-1, held-out tasks after them
(`task_id_table('synthetic')`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import random
import string
from typing import Callable, Optional

import numpy as np
import seqio

from tasks import fewshot, metrics, mixtures, registry, sources

FAMILY = "synthetic"
TRAIN_MIXTURE = "synthetic_train"
GROUP_SIZE = 3
# Letters a..x in groups of three; 'y' and 'z' are in no group (always copied).
GROUPS = tuple(string.ascii_lowercase[i:i + GROUP_SIZE] for i in range(0, 24, GROUP_SIZE))


def _upper_group(letters: str) -> Callable[[str], str]:
  table = str.maketrans(letters, letters.upper())
  return lambda s: s.translate(table)


SKILLS: dict[str, Callable[[str], str]] = {f"up_{g}": _upper_group(g) for g in GROUPS}


def apply_skills(composition: tuple[str, ...], s: str) -> str:
  """Applies the skills left to right ('up_abc', 'up_def') upper-cases a..f."""
  for skill in composition:
    s = SKILLS[skill](s)
  return s


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """Size and seed of the synthetic family.

  Defaults: 24 training + 8 held-out tasks, each a set of 3 of the 8 skills,
  on strings of 5 distinct letters in alphabetical order (inputs and targets
  6 byte tokens with EOS). T5's cross-attention carries no position, and a
  tiny T5 trained from scratch did not learn to copy random orders in 2,500
  steps (it emitted the right letters, correctly cased, in a wrong order);
  in alphabetical order the next output letter follows from the content
  alone, and the copy every task shares is learned in about 700 steps.
  """
  n_skills_pool: int = 8
  composition_length: int = 3
  n_train_tasks: int = 24
  n_heldout_tasks: int = 8
  n_train_examples: int = 2000
  n_validation_examples: int = 100
  n_test_examples: int = 200
  min_length: int = 5
  max_length: int = 5
  seed: int = 0
  fewshot_ks: tuple = (4, 16, 64)
  fewshot_seeds: tuple = (0, 1, 2, 3, 4)
  distinct_letters: bool = True  # no letter twice in one string
  sorted_letters: bool = True  # letters of an input in alphabetical order

  def sequence_length(self) -> dict[str, int]:
    """Byte-token lengths that hold every example (EOS included)."""
    return {"inputs": self.max_length + 1, "targets": self.max_length + 1}

  def skills(self) -> list[str]:
    return list(SKILLS)[:self.n_skills_pool]


def task_name(composition: tuple[str, ...]) -> str:
  return "synthetic_" + "_then_".join(composition)


def _random_string(rng: random.Random, spec: SyntheticSpec) -> str:
  n = rng.randint(spec.min_length, spec.max_length)
  if spec.distinct_letters:
    letters = rng.sample(string.ascii_lowercase, n)
    return "".join(sorted(letters) if spec.sorted_letters else letters)
  return "".join(rng.choice(string.ascii_lowercase) for _ in range(n))


@functools.lru_cache(maxsize=8)
def compositions(spec: SyntheticSpec) -> tuple[tuple, tuple]:
  """(training compositions, held-out compositions), deterministic in spec.seed.

  Each composition is a tuple of distinct skills in pool order. Raises
  ValueError when the spec asks for more sets than exist, or when no draw
  puts every held-out skill into some training task.
  """
  if not 1 <= spec.n_skills_pool <= len(SKILLS):
    raise ValueError(f"n_skills_pool must be in 1..{len(SKILLS)}, got {spec.n_skills_pool}")
  skills = spec.skills()
  candidates = list(itertools.combinations(skills, spec.composition_length))
  rng = random.Random(f"synthetic-compositions-{spec.seed}")
  need = spec.n_train_tasks + spec.n_heldout_tasks
  if need <= len(candidates):
    for _ in range(100):
      rng.shuffle(candidates)
      heldout = candidates[:spec.n_heldout_tasks]
      train = candidates[spec.n_heldout_tasks:need]
      train_skills = {s for comp in train for s in comp}
      if all(s in train_skills for comp in heldout for s in comp):
        return tuple(train), tuple(heldout)
  raise ValueError(
      f"cannot draw {spec.n_train_tasks} training + {spec.n_heldout_tasks} held-out distinct "
      f"sets of {spec.composition_length} from {spec.n_skills_pool} skills "
      f"({len(candidates)} exist) with every held-out skill seen in training; lower the task "
      "counts or enlarge the pool")


def skill_matrix(spec: SyntheticSpec = SyntheticSpec()) -> tuple[np.ndarray, list[str],
                                                                  list[str]]:
  """Ground truth: (M [tasks, skills] in {0, 1}, task names, skill names).

  Rows are the training tasks then the held-out tasks, in task-id order.
  """
  train, heldout = compositions(spec)
  skills = spec.skills()
  m = np.array([[float(s in comp) for s in skills] for comp in train + heldout])
  return m, [task_name(c) for c in train + heldout], skills


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
    if s in seen:
      continue
    seen.add(s)
    pairs.append((s, apply_skills(composition, s)))
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


_REGISTERED: list[SyntheticSpec] = [SyntheticSpec()]


def registered_spec() -> SyntheticSpec:
  """The spec of the last `register_synthetic` call (the default before any)."""
  return _REGISTERED[-1]


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
  _REGISTERED.append(spec)
  return fam
