"""Routing pictures that stay readable with many tasks, and the full matrix as data.

`save_routing_picture` is what a stage calls after multi-task training. It always
writes the whole routing matrix as `routing.csv` (one row per task: task, group,
then p(skill s | task, head h) in columns `h<h>_s<s>`). The picture is
`routing_plot.save_routing_heatmap` (one row per task) up to `PER_TASK_ROWS` tasks;
beyond that, `save_grouped_heatmap` draws one row per *group* of tasks (a
BIG-bench task's subtasks `parent.sub` form one group; their routing is averaged),
groups ordered by hierarchical clustering so that groups routed alike sit together,
and at most `max_rows` groups (the largest) with the rest counted in the title.
Both draw one panel per routing head, the first `routing_plot.MAX_HEAD_PANELS`
of more (t0_3b.gin routes 64 heads); the CSV holds every head.
"""

from __future__ import annotations

import csv
import os
from typing import Optional, Sequence

import numpy as np
from scipy.cluster import hierarchy

from mhr_jax.evaluation.results import save_figure_atomic
from mhr_jax.evaluation.routing_plot import head_panels, save_routing_heatmap

PER_TASK_ROWS = 60  # up to this many tasks, one row per task


def task_group(name: str) -> str:
  """A task's group: the part before the first '.' (BIG-bench's parent task)."""
  return name.split(".")[0]


def group_routing(probs: np.ndarray, task_names: Sequence[str]
                  ) -> tuple[list[str], np.ndarray, np.ndarray]:
  """(group names, mean routing [groups, heads, skills], tasks per group [groups])."""
  groups: dict[str, list[int]] = {}
  for i, name in enumerate(task_names):
    groups.setdefault(task_group(name), []).append(i)
  names = list(groups)
  means = np.stack([probs[groups[g]].mean(0) for g in names])
  return names, means, np.asarray([len(groups[g]) for g in names])


def cluster_order(rows: np.ndarray) -> np.ndarray:
  """Row order of hierarchical clustering (average linkage, Euclidean) of [n, d] rows."""
  if len(rows) < 3:
    return np.arange(len(rows))
  return hierarchy.leaves_list(hierarchy.linkage(rows, method="average"))


def save_routing_csv(probs: np.ndarray, path: str, task_names: Sequence[str]) -> str:
  """The full routing matrix [tasks, heads, skills] as CSV; returns the path."""
  n_tasks, n_heads, n_skills = probs.shape
  names = list(task_names) if task_names else [str(i) for i in range(n_tasks)]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["task", "group"] + [f"h{h}_s{s}" for h in range(n_heads)
                                    for s in range(n_skills)])
    for name, row in zip(names, probs.reshape(n_tasks, -1)):
      w.writerow([name, task_group(name)] + [f"{x:.5f}" for x in row])
  os.replace(path + ".tmp", path)
  return path


def save_grouped_heatmap(probs: np.ndarray, path: str, task_names: Sequence[str],
                         title: str = "Learned routing", max_rows: int = 150) -> str:
  """One row per task group (mean routing), clustered, at most `max_rows` groups."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (start-up: see results.py)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  names, means, sizes = group_routing(probs, task_names)
  keep = np.sort(np.argsort(-sizes, kind="stable")[:max_rows])
  dropped = len(names) - len(keep)
  names, means, sizes = [names[i] for i in keep], means[keep], sizes[keep]
  order = cluster_order(means.reshape(len(names), -1))
  means = means[order]
  # Drop a prefix every name shares (e.g. 'bigbench_'): the title keeps it.
  prefix = os.path.commonprefix(names) if len(names) > 1 else ""
  prefix = prefix[:prefix.rfind("_") + 1]
  short = [n[len(prefix):] for n in names]
  labels = [f"{short[i]} ({sizes[i]})" if sizes[i] > 1 else short[i] for i in order]
  n_rows, n_heads, n_skills = means.shape
  heads, left_out = head_panels(n_heads)
  row_in = 0.13
  fig, axes = plt.subplots(1, len(heads), squeeze=False, layout="constrained",
                           figsize=(3.5 + 0.3 * n_skills * len(heads), 1.2 + row_in * n_rows))
  lo, hi = float(means.min()), max(float(means.max()), float(means.min()) + 1e-6)
  for h in heads:
    ax = axes[0, h]
    im = ax.imshow(means[:, h, :], aspect="auto", cmap="viridis", vmin=lo, vmax=hi,
                   interpolation="nearest")
    ax.set_title(f"head {h}" if n_heads > 1 else "routing", fontsize=9)
    ax.set_xlabel("skill", fontsize=8)
    ax.set_xticks(range(n_skills))
    ax.tick_params(axis="x", labelsize=7)
    if h == 0:
      ax.set_yticks(range(n_rows))
      ax.set_yticklabels(labels, fontsize=6)
    else:
      ax.set_yticks([])
  fig.colorbar(im, ax=axes.ravel().tolist(), shrink=min(1.0, 12 / n_rows), aspect=30,
               label="p(skill | task)")
  shown = (f"{len(task_names)} {prefix}* tasks in {n_rows} groups (subtasks averaged, "
           "the count in brackets; rows clustered)")
  if dropped:
    shown += f"; {dropped} smallest groups not shown"
  if left_out:
    shown += f"; {left_out}"
  fig.suptitle(f"{title}\n{shown}", fontsize=10)
  return save_figure_atomic(fig, path)


def save_routing_picture(probs: np.ndarray, directory: str, task_names: Sequence[str],
                         title: str = "Learned routing",
                         max_rows: Optional[int] = 150) -> dict[str, str]:
  """Writes routing.csv and routing.png under `directory`; returns {'csv', 'png'} paths."""
  csv_path = save_routing_csv(probs, os.path.join(directory, "routing.csv"), task_names)
  png = os.path.join(directory, "routing.png")
  if probs.shape[0] <= PER_TASK_ROWS:
    save_routing_heatmap(probs, png, task_names, title=title)
  else:
    save_grouped_heatmap(probs, png, task_names, title=title, max_rows=max_rows or 150)
  return {"csv": csv_path, "png": png}
