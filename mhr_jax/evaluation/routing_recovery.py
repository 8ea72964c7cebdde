"""Does learned routing recover which tasks share skills? A score against ground truth.

A task family that knows which primitive skills each task composes (the
synthetic family: `tasks.synthetic.skill_matrix`) gives, for every pair of
training tasks, the number of skills they share. Learned routing gives, per
head, how similar two tasks' routing is: the Pearson correlation of their
routing rows, concatenated over every adapted layer (a skill index means
nothing across layers, so rows are compared layer by layer inside one long
vector, never averaged over layers first). The score is Spearman's rank
correlation, over the pairs of tasks, between routing similarity and shared
skills: per head, averaged over heads, and for all heads concatenated.

The permutation baseline relabels the tasks of the ground truth at random
(same number of skills per task, same sharing structure, wrong tasks) and
scores the same routing against it; `p_value` is the fraction of
permutations that score at least the learned routing (with the +1
correction). Deterministic given `seed`.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Optional, Sequence

import numpy as np
from scipy import stats

from mhr_jax import param_tree
from mhr_jax.adapters.routing import routing_weights
from mhr_jax.evaluation.results import save_figure_atomic, write_atomic
from mhr_jax.experiment.stages import load_multitask
from tasks import synthetic


def routing_rows(params: Mapping) -> np.ndarray:
  """Evaluation routing weights of every adapted module, [modules, tasks, heads, skills].

  Modules scanned with a leading 'layers' axis count one module per layer.
  Raises ValueError when the tree holds no routing logits.
  """
  mats = []
  for path, value in sorted(param_tree.flatten(params).items()):
    if param_tree.is_routing_path(path):
      z = np.asarray(value, np.float32)
      z = z.reshape((-1,) + z.shape[-3:])
      mats.append(np.asarray(routing_weights(z, deterministic=True), np.float64))
  if not mats:
    raise ValueError("no parameter named 'routing_logits' in the tree: is the model routed?")
  return np.concatenate(mats, axis=0)


def task_similarity(rows: np.ndarray) -> np.ndarray:
  """[modules, tasks, heads, skills] -> [heads, tasks, tasks] Pearson similarity.

  Each task's vector for a head is its routing over every module and skill.
  A constant row (e.g. untrained, uniform routing) has similarity 0.
  """
  m, t, h, s = rows.shape
  vec = rows.transpose(2, 1, 0, 3).reshape(h, t, m * s)
  vec = vec - vec.mean(-1, keepdims=True)
  norm = np.linalg.norm(vec, axis=-1, keepdims=True)
  vec = np.where(norm > 1e-12, vec / np.maximum(norm, 1e-12), 0.0)
  return np.einsum("htd,hud->htu", vec, vec)


def shared_skills(truth: np.ndarray) -> np.ndarray:
  """[tasks, skills] in {0, 1} -> [tasks, tasks] number of skills two tasks share."""
  truth = np.asarray(truth, np.float64)
  return truth @ truth.T


def _ranked_pairs(m: np.ndarray) -> np.ndarray:
  """Upper-triangle entries of [tasks, tasks] as standardised ranks (0 when constant)."""
  # Rounded so values equal up to float error tie (e.g. two pairs sharing as many skills).
  r = stats.rankdata(np.round(m[np.triu_indices(m.shape[0], k=1)], 9))
  r = r - r.mean()
  norm = np.linalg.norm(r)
  return r / norm if norm > 0 else r


def _pairs_spearman(sim: np.ndarray, shared: np.ndarray) -> float:
  return float(_ranked_pairs(sim) @ _ranked_pairs(shared))


def recovery_score(rows: np.ndarray, truth: np.ndarray, *, n_permutations: int = 1000,
                   seed: int = 0) -> dict:
  """Spearman(routing similarity, shared skills) over task pairs, with a permutation baseline.

  Args:
    rows: [modules, tasks, heads, skills] routing probabilities (`routing_rows`).
    truth: [tasks, true skills] in {0, 1}, the same tasks in the same order.
  Returns:
    {'per_head': [rho_h], 'mean_over_heads', 'all_heads', 'permutation':
     {'mean', 'std', 'q95', 'p_value', 'n'}} (baseline on the mean over heads).
  """
  rows, truth = np.asarray(rows), np.asarray(truth)
  if rows.ndim != 4 or truth.ndim != 2 or rows.shape[1] != truth.shape[0]:
    raise ValueError(f"rows must be [modules, tasks, heads, skills] and truth [tasks, skills] "
                     f"over the same tasks; got {rows.shape} and {truth.shape}")
  heads = np.stack([_ranked_pairs(s) for s in task_similarity(rows)])  # [heads, pairs]
  all_heads = task_similarity(rows.transpose(0, 1, 3, 2).reshape(
      rows.shape[0], rows.shape[1], 1, -1))[0]
  shared = shared_skills(truth)
  per_head = [float(v) for v in heads @ _ranked_pairs(shared)]
  rng = np.random.default_rng(seed)
  null = np.array([float(np.mean(heads @ _ranked_pairs(shared[np.ix_(p, p)])))
                   for p in (rng.permutation(truth.shape[0]) for _ in range(n_permutations))])
  observed = float(np.mean(per_head))
  return {
      "per_head": per_head, "mean_over_heads": observed,
      "all_heads": _pairs_spearman(all_heads, shared),
      "permutation": {"mean": float(null.mean()), "std": float(null.std()),
                      "q95": float(np.quantile(null, 0.95)),
                      "p_value": float((1 + np.sum(null >= observed)) / (1 + len(null))),
                      "n": int(n_permutations)},
  }


def format_score(score: Mapping) -> str:
  """One line for a summary."""
  heads = ", ".join(f"{r:.2f}" for r in score["per_head"])
  perm = score["permutation"]
  return (f"routing recovery (Spearman, routing similarity vs shared skills over task pairs): "
          f"{score['mean_over_heads']:.3f} mean over heads [{heads}], "
          f"{score['all_heads']:.3f} all heads together; permutation baseline "
          f"{perm['mean']:.3f} ± {perm['std']:.3f} (95th pct {perm['q95']:.3f}, "
          f"p = {perm['p_value']:.4f}, {perm['n']} permutations)")


def save_recovery_figure(truth: np.ndarray, rows: np.ndarray, path: str,
                         task_names: Sequence[str] = (), skill_names: Sequence[str] = (),
                         title: str = "Routing recovery") -> str:
  """PNG: ground truth (task x skill), true shared skills and learned similarity (task x task)."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (start-up: see results.py)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  truth = np.asarray(truth)
  n = truth.shape[0]
  rows = np.asarray(rows)
  sim = task_similarity(rows.transpose(0, 1, 3, 2).reshape(rows.shape[0], n, 1, -1))[0]
  shared = shared_skills(truth)
  fig, axes = plt.subplots(1, 3, figsize=(6 + 0.5 * n, 1.5 + 0.22 * n),
                           gridspec_kw={"width_ratios": [truth.shape[1], n, n]})
  axes[0].imshow(truth, aspect="auto", cmap="Greys", vmin=0, vmax=1)
  axes[0].set_title("ground truth: skills per task")
  axes[0].set_xticks(range(truth.shape[1]))
  axes[0].set_xticklabels(list(skill_names) or range(truth.shape[1]), rotation=90, fontsize=7)
  axes[0].set_yticks(range(n))
  axes[0].set_yticklabels(list(task_names)[:n] if task_names else range(n), fontsize=6)
  im1 = axes[1].imshow(shared, cmap="Greys")
  axes[1].set_title("ground truth: shared skills")
  fig.colorbar(im1, ax=axes[1], shrink=0.6)
  off = sim[~np.eye(n, dtype=bool)]
  im2 = axes[2].imshow(np.where(np.eye(n, dtype=bool), np.nan, sim), cmap="viridis",
                       vmin=float(off.min()), vmax=float(off.max()))
  axes[2].set_title("learned: routing similarity\n(all heads)")
  fig.colorbar(im2, ax=axes[2], shrink=0.6)
  for ax in axes[1:]:
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle(title)
  return save_figure_atomic(fig, path)


def ground_truth(task_names: Sequence[str]) -> Optional[tuple[np.ndarray, list[str]]]:
  """(truth [tasks, skills], skill names) when every task is a registered synthetic task."""
  truth, names, skills = synthetic.skill_matrix(synthetic.registered_spec())
  index = {n: i for i, n in enumerate(names)}
  if not task_names or any(t not in index for t in task_names):
    return None
  return truth[[index[t] for t in task_names]], skills


def score_multitask_stage(stage_dir: str, *, n_permutations: int = 1000,
                          seed: int = 0) -> Optional[dict]:
  """Scores a multi-task checkpoint's routing against its family's ground truth.

  Writes routing_recovery.json and routing_recovery.png into `stage_dir`.
  Returns the score, or None when the checkpoint is not routed or its tasks
  have no ground truth (only the synthetic family has one).
  """
  _, adapter, params, extra = load_multitask(stage_dir)
  if adapter is None or adapter.kind != "poly":
    return None
  table = extra["task_ids"]
  names = sorted(table, key=table.get)
  found = ground_truth(names)
  if found is None:
    return None
  truth, skills = found
  rows = routing_rows(params)
  score = recovery_score(rows, truth, n_permutations=n_permutations, seed=seed)
  write_atomic(os.path.join(stage_dir, "routing_recovery.json"), json.dumps(score, indent=1))
  save_recovery_figure(truth, rows, os.path.join(stage_dir, "routing_recovery.png"), names,
                       skills, title=f"{extra.get('method', '?')}: routing vs ground truth")
  return score
