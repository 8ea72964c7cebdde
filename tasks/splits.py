"""Deterministic train/validation/test splits of a task's examples, by hash.

Examples are grouped by their input text (duplicates never straddle splits),
groups are ordered by a hash of (task name, input), and the first 20% of
groups go to test, the next 10% to validation, the rest to train. The result
depends only on the examples and the task name.
"""

from __future__ import annotations

import hashlib
import math
from typing import Mapping, Sequence

SPLITS = ("train", "validation", "test")


def _hash(task: str, text: str) -> str:
  return hashlib.sha256(f"{task}\0{text}".encode("utf-8")).hexdigest()


def split_examples(task: str, records: Sequence[Mapping], test_fraction: float = 0.2,
                   validation_fraction: float = 0.1) -> dict[str, list]:
  """{split: records} for 'train', 'validation', 'test' (record order kept within a split).

  Tasks with 2+ distinct inputs get at least one test group, with 5+ at least
  one validation group.
  """
  groups: dict[str, list[int]] = {}
  for i, r in enumerate(records):
    groups.setdefault(r["inputs"], []).append(i)
  order = sorted(groups, key=lambda text: _hash(task, text))
  n = len(order)
  n_test = max(1, math.floor(test_fraction * n + 0.5)) if n >= 2 else 0
  n_val = max(1, math.floor(validation_fraction * n + 0.5)) if n >= 5 else 0
  assignment = {}
  for rank, text in enumerate(order):
    split = "test" if rank < n_test else "validation" if rank < n_test + n_val else "train"
    for i in groups[text]:
      assignment[i] = split
  return {s: [r for i, r in enumerate(records) if assignment[i] == s] for s in SPLITS}


def is_heldout(task: str, fraction: float = 0.2) -> bool:
  """Deterministic task-level split: held out iff sha256(task) falls in the first `fraction`."""
  return int(_hash("heldout", task)[:8], 16) < fraction * 16 ** 8
