"""Super-NaturalInstructions from a local clone of allenai/natural-instructions.

Expected layout (`data_dir`, default $MHR_JAX_NI_DIR or
~/.cache/mhr_jax/natural-instructions):

  tasks/<task>.json                  Definition, Positive Examples, Instances, ...
  splits/default/train_tasks.txt     training task names (one per line; 756)
  splits/default/test_tasks.txt      held-out task names (119)

The paper's protocol (microsoft/mttl at tag mhr-camera-ready, c66b20d6;
docs/PROTOCOL.md lists every setting with its source line):

Prompt (mttl's NI collator, mttl/datamodule/ni_original_data_module.py:103-124,
with its default of no demonstrations):

  Task definition: <definition>.
  Now complete the following example -
  Input: <instance input>.
  Output:

(a '.' is added only when the text does not already end in punctuation).

Instances (mttl/dataloader/ni_original_dataset.py:175-190):
- a training task keeps `instances_per_train_task` (100) of its instances,
  drawn by a seeded shuffle ('train' split; no validation or test);
- a held-out task is tested on its first `test_instances` (100; the
  benchmark puts its label-balanced evaluation instances first), and its
  few-shot data come from the rest: 'train' = 'validation' = instances[100:],
  from which `tasks.fewshot` draws k training and, for this family, the next
  k validation instances of the same seeded permutation (mttl: 32 + 32).

Target: the instance's first output; every output counts at evaluation
(exact match, Rouge-L). Task ids: training tasks, then test tasks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import string
from typing import Any, Mapping, Optional

import numpy as np
import seqio

from tasks import metrics
from tasks import fewshot, mixtures, registry, sources

FAMILY = "natural_instructions"
TRAIN_MIXTURE = "natural_instructions_train"
# Seed of the training tasks' instance draw (mttl's default `seed`, mttl/config.py:198).
TRAIN_INSTANCES_SEED = 42


def default_dir() -> str:
  return os.path.expanduser(os.environ.get(
      "MHR_JAX_NI_DIR", os.path.join("~", ".cache", "mhr_jax", "natural-instructions")))


def read_split(data_dir: str, split: str) -> list[str]:
  """Task names listed in splits/default/<split>_tasks.txt."""
  path = os.path.join(data_dir, "splits", "default", f"{split}_tasks.txt")
  with open(path, encoding="utf-8") as f:
    return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def available(data_dir: Optional[str] = None) -> bool:
  data_dir = data_dir or default_dir()
  return all(os.path.isfile(os.path.join(data_dir, "splits", "default", f"{s}_tasks.txt"))
             for s in ("train", "test"))


def task_name(ni_task: str) -> str:
  return "ni_" + ni_task


def _first(value: Any) -> str:
  """A field that the task files store as a list of strings (Definition) or a string."""
  return str(value[0] if isinstance(value, list) and value else value or "").strip()


def _end_with_punctuation(text: str) -> str:
  return text if text and text[-1] in string.punctuation else text + "."


def format_prompt(task: Mapping[str, Any], instance_input: str, num_positive: int = 0) -> str:
  """mttl's prompt: definition, `num_positive` demonstrations (paper: 0), the instance.

  Demonstrations follow mttl's layout without the EOS token it writes after
  each (a tokenizer-specific string).
  """
  parts = [_end_with_punctuation("Task definition: " + _first(task.get("Definition"))) + "\n"]
  for i, ex in enumerate(task.get("Positive Examples", [])[:num_positive]):
    parts.append(_end_with_punctuation(
        f" Positive Example {i + 1} -\nInput: {_first(ex['input'])}") + "\n")
    parts.append(_end_with_punctuation(f" Output: {_first(ex['output'])}") + "\n\n")
  parts.append(_end_with_punctuation(
      f"Now complete the following example -\nInput: {instance_input.strip()}") + "\nOutput:")
  return "".join(parts)


def parse_task(task: Mapping[str, Any], num_positive: int = 0) -> list[dict]:
  """Generative records (inputs, targets, answers) of a task's instances, in file order."""
  records = []
  for inst in task.get("Instances", []):
    outputs = inst["output"] if isinstance(inst["output"], list) else [inst["output"]]
    outputs = [str(o) for o in outputs]
    if outputs:
      records.append(sources.generative_record(
          format_prompt(task, _first(inst["input"]), num_positive), outputs))
  return records


def _instance_rng(ni_task: str, seed: int) -> np.random.Generator:
  salt = int.from_bytes(hashlib.sha256(ni_task.encode("utf-8")).digest()[:4], "little")
  return np.random.default_rng([int(seed), salt])


@functools.lru_cache(maxsize=16)
def load_splits(data_dir: str, ni_task: str, num_positive: int, role: str,
                instances_per_train_task: int = 100,
                test_instances: int = 100) -> dict[str, list]:
  """{split: records} of one task under the paper's protocol (module docstring)."""
  with open(os.path.join(data_dir, "tasks", f"{ni_task}.json"), encoding="utf-8") as f:
    records = parse_task(json.load(f), num_positive)
  if role == "train":
    order = _instance_rng(ni_task, TRAIN_INSTANCES_SEED).permutation(len(records))
    return {"train": [records[i] for i in sorted(order[:instances_per_train_task])]}
  pool = records[test_instances:]
  return {"train": pool, "validation": pool, "test": records[:test_instances]}


def _load_split(data_dir: str, ni_task: str, num_positive: int, role: str,
                instances_per_train_task: int, test_instances: int, split: str) -> list[dict]:
  return load_splits(data_dir, ni_task, num_positive, role, instances_per_train_task,
                     test_instances)[split]


def register_natural_instructions(data_dir: Optional[str] = None,
                                  vocabulary: Optional[seqio.Vocabulary] = None,
                                  num_positive: int = 0, cap: int = 1000,
                                  instances_per_train_task: int = 100,
                                  test_instances: int = 100,
                                  fewshot_validation: bool = True) -> registry.Family:
  """Registers `ni_<task>` for the default train and test tasks, and `natural_instructions_train`
  (rates: training examples, counted lazily, capped at `cap`).

  fewshot_validation: a few-shot task's validation split holds the k
  instances drawn after its k training ones (mttl's 32 + 32).
  """
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_dir()))
  if not available(data_dir):
    raise FileNotFoundError(f"no Super-NaturalInstructions clone at {data_dir!r} (need "
                            "splits/default/{train,test}_tasks.txt and tasks/*.json); pass "
                            "data_dir or set $MHR_JAX_NI_DIR")
  registry.remove_family(FAMILY)
  train, test = read_split(data_dir, "train"), read_split(data_dir, "test")
  present = lambda t: os.path.isfile(os.path.join(data_dir, "tasks", f"{t}.json"))
  train, test = [t for t in train if present(t)], [t for t in test if present(t)]
  for task_id, ni_task in enumerate(train + test):
    role = "train" if task_id < len(train) else "heldout"
    load = functools.partial(_load_split, data_dir, ni_task, num_positive, role,
                             instances_per_train_task, test_instances)
    registry.add_task(registry.TaskSpec(
        name=task_name(ni_task), family=FAMILY, role=role, kind=sources.GENERATIVE,
        source=sources.records_source(
            load, sources.GENERATIVE,
            ("train",) if role == "train" else ("train", "validation", "test")),
        task_id=task_id, metric_fns=(metrics.generation_metrics,),
        metric_names=("exact_match", "rouge_l")), vocabulary=vocabulary)
  fam = registry.Family(FAMILY, [task_name(t) for t in train], [task_name(t) for t in test],
                        TRAIN_MIXTURE if train else None,
                        sequence_length={"inputs": 1024, "targets": 128})
  registry.set_family(fam)
  fewshot.set_validation_after_train(FAMILY, fewshot_validation)
  if train:
    mixtures.register_mixture(TRAIN_MIXTURE, FAMILY, fam.train_tasks, scheme="proportional",
                              cap=cap)
  return fam
