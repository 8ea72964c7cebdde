"""Routing recovery: Spearman over task pairs against ground truth, permutation baseline."""

import numpy as np
import pytest
from scipy import stats

from mhr_jax.evaluation import routing_recovery as rr
from tasks import synthetic


def _truth():
  truth, _, _ = synthetic.skill_matrix(synthetic.SyntheticSpec())
  return truth[:24]


def _rows(truth, layers=2, noise=0.0, seed=0):
  """Routing that puts a task's mass on its true skills, [layers, tasks, 1 head, skills]."""
  rng = np.random.default_rng(seed)
  p = truth / truth.sum(1, keepdims=True) + noise * rng.random((layers,) + truth.shape)
  p = p / p.sum(-1, keepdims=True)
  return p[:, :, None, :] if p.ndim == 3 else np.broadcast_to(p, (layers,) + p.shape)[:, :, None]


def test_routing_equal_to_the_ground_truth_scores_one_and_beats_every_permutation():
  truth = _truth()
  score = rr.recovery_score(_rows(truth), truth, n_permutations=200)
  assert score["per_head"] == pytest.approx([1.0]) and score["all_heads"] == pytest.approx(1.0)
  assert score["permutation"]["p_value"] == pytest.approx(1 / 201)
  assert abs(score["permutation"]["mean"]) < 0.05 and score["permutation"]["q95"] < 0.2


def test_random_routing_scores_like_the_permutation_baseline():
  truth = _truth()
  rows = np.random.default_rng(1).dirichlet(np.ones(8), size=(3, 24, 2))
  score = rr.recovery_score(rows, truth, n_permutations=200)
  assert abs(score["mean_over_heads"]) < 0.15 and score["permutation"]["p_value"] > 0.05


def test_per_head_score_is_scipy_spearman_over_task_pairs():
  truth = _truth()
  rows = _rows(truth, layers=3, noise=0.5, seed=2)
  sim = rr.task_similarity(rows)[0]
  iu = np.triu_indices(24, k=1)
  # Pearson similarity of the routing vectors, concatenated over layers.
  vec = rows[:, :, 0, :].transpose(1, 0, 2).reshape(24, -1)
  assert sim[3, 7] == pytest.approx(np.corrcoef(vec[3], vec[7])[0, 1])
  expected = stats.spearmanr(sim[iu], (truth @ truth.T)[iu]).statistic
  score = rr.recovery_score(rows, truth, n_permutations=10)
  assert score["per_head"][0] == pytest.approx(expected)
  assert 0.3 < expected < 1.0  # noisy routing: partial recovery


def test_mismatched_tasks_name_the_shapes():
  with pytest.raises(ValueError, match=r"\(2, 24, 1, 8\) and \(23, 8\)"):
    rr.recovery_score(_rows(_truth()), _truth()[:23])
