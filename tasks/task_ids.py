"""Task-id tables (task name -> routing row), saved as JSON next to every checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Mapping, Sequence


def make_table(names: Sequence[str]) -> dict[str, int]:
  """{name: position}; raises on duplicate names."""
  table = {name: i for i, name in enumerate(names)}
  if len(table) != len(names):
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    raise ValueError(f"duplicate task names in a task-id table: {dupes}")
  return table


def validate_table(table: Mapping[str, int]) -> dict[str, int]:
  """Checks the ids are distinct non-negative ints; returns a plain dict.

  A family's table is 0..n-1; a mixture of held-out tasks keeps its tasks'
  family ids, so the routing table needs max(id) + 1 rows (`num_rows`).
  """
  ids = [int(v) for v in table.values()]
  if len(set(ids)) != len(ids) or any(i < 0 for i in ids):
    raise ValueError(f"task ids must be distinct and non-negative, got {sorted(ids)}")
  return {str(k): int(v) for k, v in table.items()}


def num_rows(table: Mapping[str, int]) -> int:
  """Rows a routing table needs to hold every id of `table`."""
  return max(table.values()) + 1 if table else 0


def save_task_ids(path: str, table: Mapping[str, int]) -> str:
  """Writes the table as JSON (sorted by id) atomically; returns `path`."""
  table = validate_table(table)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_task_ids_")
  with os.fdopen(fd, "w") as f:
    json.dump(dict(sorted(table.items(), key=lambda kv: kv[1])), f, indent=1)
  os.replace(tmp, path)
  return path


def load_task_ids(path: str) -> dict[str, int]:
  """Reads a table written by `save_task_ids` (validated)."""
  with open(path) as f:
    return validate_table(json.load(f))
