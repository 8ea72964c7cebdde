"""k-shot training subsets: one registered task per (task, k, seed), e.g. `rte_k16_s0`.

The k examples are drawn by seed from the parent task's `train` split (class
balanced on request, for multiple choice); `validation` and `test` are the
parent's, so the few-shot training examples never overlap the evaluation ones.
Few-shot tasks carry task_id 0: adaptation gives each held-out task a fresh
one-row routing table.

This is k-shot *fine-tuning* data, not seqio.experimental.FewshotDataSource
(which builds in-context prompts).
"""

from __future__ import annotations

import hashlib
from typing import Mapping, Optional, Sequence

import numpy as np

from tasks import registry, sources


# Families whose few-shot validation split is the k records drawn right after
# the k training ones (same seeded permutation of the parent's train split)
# instead of the parent's validation split (Super-NaturalInstructions, mttl).
_VALIDATION_AFTER_TRAIN: set[str] = set()


def set_validation_after_train(family: str, enabled: bool = True) -> None:
  """Few-shot tasks of `family` validate on the k records drawn after their k training ones."""
  (_VALIDATION_AFTER_TRAIN.add if enabled else _VALIDATION_AFTER_TRAIN.discard)(family)


def fewshot_task_name(task: str, k: int, seed: int) -> str:
  return f"{task}_k{int(k)}_s{int(seed)}"


def _rng(task: str, seed: int) -> np.random.Generator:
  # Mix the task name in so two tasks with the same seed draw unrelated subsets.
  salt = int.from_bytes(hashlib.sha256(task.encode()).digest()[:4], "little")
  return np.random.default_rng([int(seed), salt])


SAMPLINGS = ("balanced", "uniform", "shuffle")


def shuffle_indices(n: int, k: int, seed: int) -> list[int]:
  """microsoft/mttl's (and T-Few's) few-shot draw: `np.random.seed(seed)`, shuffle, first k.

  (dataloader/t0_dataset_readers.py `_sample_few_shot_data`.) The same
  examples as mttl's when the records are in the HF `datasets` order.
  """
  order = np.arange(n)
  np.random.RandomState(seed).shuffle(order)
  return order[:k].tolist()


def select_fewshot(records: Sequence[Mapping], k: int, seed: int, *, task: str = "",
                   balanced: bool = False, sampling: Optional[str] = None) -> list[int]:
  """Indices of k records drawn without replacement by seed.

  sampling: 'balanced' (round-robin over labels, each label's examples in a
  seeded random order, so classes differ in count by at most one where
  possible), 'uniform' (a seeded random subset, salted by the task name), or
  'shuffle' (mttl's plain seeded shuffle, `shuffle_indices`; in that order).
  None: 'balanced' if `balanced` else 'uniform'.
  """
  n = len(records)
  if not 0 < k <= n:
    raise ValueError(f"cannot draw k={k} examples from {task or 'a task'} with {n} training "
                     f"examples")
  sampling = sampling or ("balanced" if balanced else "uniform")
  if sampling not in SAMPLINGS:
    raise ValueError(f"sampling={sampling!r} is not supported; valid choices: {list(SAMPLINGS)}")
  if sampling == "shuffle":
    return shuffle_indices(n, k, seed)
  balanced = sampling == "balanced"
  rng = _rng(task, seed)
  if not balanced:
    return sorted(rng.permutation(n)[:k].tolist())
  if any("label" not in r for r in records):
    raise ValueError(f"balanced few-shot sampling needs labelled (multiple-choice) examples; "
                     f"{task or 'this task'} has none")
  by_label: dict[int, list[int]] = {}
  for i in rng.permutation(n).tolist():
    by_label.setdefault(int(records[i]["label"]), []).append(i)
  queues = [by_label[y] for y in sorted(by_label)]
  picked: list[int] = []
  while len(picked) < k:
    for q in queues:
      if q and len(picked) < k:
        picked.append(q.pop())
  return sorted(picked)


def register_fewshot_task(task: str, k: int, seed: int, *, balanced: bool = False,
                          vocabulary=None, sampling: Optional[str] = None) -> str:
  """Registers `<task>_k<k>_s<seed>` (idempotent) and returns its name.

  sampling='shuffle' (mttl's draw) registers `<task>_k<k>_s<seed>_shuffle`.
  """
  parent = registry.task_spec(task)
  name = fewshot_task_name(task, k, seed) + ("_shuffle" if sampling == "shuffle" else "")
  if registry.is_task(name) and registry.task_spec(name).parent == task:
    return name

  def load_split(split: str) -> list[dict]:
    if split == "validation" and parent.family in _VALIDATION_AFTER_TRAIN and not balanced:
      records = registry.formatted_records(task, "train")
      if not 0 < 2 * k <= len(records):
        raise ValueError(f"cannot draw k={k} training and k validation examples from {task} "
                         f"with {len(records)} examples")
      return [records[i] for i in sorted(_rng(task, seed).permutation(len(records))[k:2 * k])]
    records = registry.formatted_records(task, split)
    if split == "train":
      records = [records[i] for i in select_fewshot(records, k, seed, task=task,
                                                    balanced=balanced, sampling=sampling)]
    return records

  splits = [s for s in ("train", "validation", "test") if s in parent.source.splits]
  registry.add_task(registry.TaskSpec(
      name=name, family=parent.family, role="fewshot", kind=parent.kind,
      source=sources.records_source(load_split, parent.kind, splits),
      task_id=0, metric_fns=parent.metric_fns, metric_names=parent.metric_names,
      parent=task),
      vocabulary=vocabulary if vocabulary is not None else parent.vocabulary)
  return name


def fewshot_task(task: str, k: int, seed: int, balanced: Optional[bool] = None,
                 sampling: Optional[str] = None) -> str:
  """Name of the few-shot task, registering it on first use.

  balanced defaults to True for multiple-choice tasks; sampling (see
  `select_fewshot`) overrides it.
  """
  if balanced is None:
    balanced = registry.task_spec(task).kind == sources.MULTIPLE_CHOICE
  return register_fewshot_task(task, k, seed, balanced=balanced, sampling=sampling)
