"""Task-id tables: task name -> routing row.

A multi-task checkpoint keeps its mixture's table in its JSON metadata
(`mhr_jax.checkpoints.orbax`, key `task_ids`).
"""

from __future__ import annotations

from typing import Sequence


def make_table(names: Sequence[str]) -> dict[str, int]:
  """{name: position}; raises on duplicate names."""
  table = {name: i for i, name in enumerate(names)}
  if len(table) != len(names):
    dupes = sorted({n for n in names if list(names).count(n) > 1})
    raise ValueError(f"duplicate task names in a task-id table: {dupes}")
  return table
