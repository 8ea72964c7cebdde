"""Heatmap of learned routing: tasks x skills, one panel per head."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from mhr_jax import param_tree
from mhr_jax.adapters.routing import routing_weights
from mhr_jax.evaluation.results import save_figure_atomic


def routing_probabilities(params: Mapping) -> np.ndarray:
  """Mean over adapted layers of the evaluation routing weights, [tasks, heads, skills].

  Layers scanned with a leading 'layers' axis are averaged over it too.
  Raises ValueError when the tree holds no routing logits.
  """
  mats = []
  for path, value in param_tree.flatten(params).items():
    if param_tree.is_routing_path(path):
      z = np.asarray(value, np.float32)
      z = z.reshape((-1,) + z.shape[-3:])  # [layers?, tasks, heads, skills]
      mats.append(np.asarray(routing_weights(z, deterministic=True)).mean(0))
  if not mats:
    raise ValueError("no parameter named 'routing_logits' in the tree: is the model routed?")
  return np.mean(mats, axis=0)


MAX_HEAD_PANELS = 8  # more routing heads than this: the first ones are drawn


def head_panels(n_heads: int) -> tuple[list[int], str]:
  """(heads drawn as panels, a note for the title when some are left out).

  One panel per head side by side stays readable up to `MAX_HEAD_PANELS`;
  configs/experiments/t0_3b.gin's 64 heads would make a picture ~25,000 px
  wide. Every head is in routing.csv.
  """
  if n_heads <= MAX_HEAD_PANELS:
    return list(range(n_heads)), ""
  return (list(range(MAX_HEAD_PANELS)),
          f"heads 0-{MAX_HEAD_PANELS - 1} of {n_heads} shown; every head in routing.csv")


def save_routing_heatmap(probs: np.ndarray, path: str, task_names: Sequence[str] = (),
                         title: str = "Learned routing") -> str:
  """Writes a PNG heatmap of `probs` [tasks, heads, skills]; returns the path.

  One panel per head (the first `MAX_HEAD_PANELS` of more), one row per task.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top  (start-up: see results.py)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n_tasks, n_heads, n_skills = probs.shape
  heads, left_out = head_panels(n_heads)
  fig, axes = plt.subplots(1, len(heads), figsize=(1.2 + 0.45 * n_skills * len(heads) + 2,
                                                   1.5 + 0.3 * n_tasks), squeeze=False)
  for h in heads:
    ax = axes[0, h]
    # Colour range spans the data: early routing sits near uniform (1/skills).
    im = ax.imshow(probs[:, h, :], aspect="auto", cmap="viridis", vmin=float(probs.min()),
                   vmax=max(float(probs.max()), float(probs.min()) + 1e-6))
    ax.set_title(f"head {h}" if n_heads > 1 else "routing")
    ax.set_xlabel("skill")
    ax.set_xticks(range(n_skills))
    if h == 0:
      ax.set_ylabel("task")
      ax.set_yticks(range(n_tasks))
      ax.set_yticklabels(list(task_names)[:n_tasks] if task_names else range(n_tasks),
                         fontsize=7)
    else:
      ax.set_yticks([])
  fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="p(skill | task)")
  fig.suptitle(f"{title}\n{left_out}" if left_out else title)
  return save_figure_atomic(fig, path)
