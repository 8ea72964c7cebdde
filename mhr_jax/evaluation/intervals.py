"""95 % intervals for a task-averaged score over seeds.

The held-out tasks are fixed (they are the benchmark); what varies between
runs is the seed (few-shot sample, adapter init) and the test examples. So
the interval is stratified by task: with T tasks, n_t seeds of task t and
s_t^2 the sample variance of task t's score over its seeds, the task average
has standard error sqrt(sum_t s_t^2 / n_t) / T, and the interval uses
Student's t with sum_t (n_t - 1) degrees of freedom.

That interval holds one multi-task pre-training fixed. Over several
pre-trainings (`runs_interval`), each run's task average is one value.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy import stats


def task_average_interval(summary: Mapping, metric: str = "exact_match",
                          level: float = 0.95) -> dict:
  """{'mean', 'half_width', 'df'} for `metric` of an `aggregate` summary.

  summary: {task: {metric: {'mean', 'std' (over seeds, ddof 0), 'n'}}, 'average': ...}.
  half_width is nan when no task has two seeds.
  """
  cells = [ms[metric] for t, ms in summary.items() if t != "average" and metric in ms]
  if not cells:
    raise ValueError(f"no task of the summary has metric {metric!r}; metrics: "
                     f"{sorted({m for ms in summary.values() for m in ms})}")
  means = np.array([c["mean"] for c in cells])
  n = np.array([c["n"] for c in cells], np.float64)
  var = np.array([c["std"] ** 2 for c in cells]) * n / np.maximum(n - 1, 1)  # ddof 1
  df = float(np.sum(n - 1))
  if df < 1:
    return {"mean": float(means.mean()), "half_width": float("nan"), "df": df}
  se = float(np.sqrt(np.sum(var / n)) / len(cells))
  return {"mean": float(means.mean()), "half_width": float(stats.t.ppf(0.5 + level / 2, df) * se),
          "df": df}


def format_interval(interval: Mapping) -> str:
  """'mean ± half_width'; a score with no two seeds of any task has no interval to print."""
  if np.isnan(interval["half_width"]):
    return f"{interval['mean']:.2f} (one run)"
  return f"{interval['mean']:.2f} ± {interval['half_width']:.2f}"


def runs_interval(values, level: float = 0.95) -> dict:
  """{'mean', 'half_width', 'df'} for the mean of independent runs' scores.

  values: one score per run (e.g. each multi-task pre-training's task-averaged
  exact match); Student's t with len(values) - 1 degrees of freedom, half_width
  nan for a single run.
  """
  x = np.asarray(values, np.float64)
  if x.ndim != 1 or not len(x):
    raise ValueError(f"expected a non-empty list of scores, got shape {x.shape}")
  df = float(len(x) - 1)
  if df < 1:
    return {"mean": float(x[0]), "half_width": float("nan"), "df": df}
  se = float(x.std(ddof=1) / np.sqrt(len(x)))
  return {"mean": float(x.mean()), "half_width": float(stats.t.ppf(0.5 + level / 2, df) * se),
          "df": df}
