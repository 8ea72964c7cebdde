"""Row-sparse routing updates equal dense AdamW where they should, and touch only the batch's rows."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhr_jax import param_tree
from mhr_jax.adapters import methods
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.models import T5
from mhr_jax.training import sparse_routing
from mhr_jax.training.optimizer import OptimizerConfig, make_optimizer
from mhr_jax.training.state import TrainState
from mhr_jax.training.step import make_train_step
from tests.utils import DEC, ENC, random_params, tiny_config

CONFIG = tiny_config(num_layers=1)
TARGETS = np.array([[4, 9, 2, 1], [8, 8, 1, 0], [3, 1, 0, 0], [12, 5, 7, 1]], np.int32)
# Routing gets its own rate and a weight decay; the clip is small enough to act.
OPT = dict(learning_rate=1e-2, routing_learning_rate=0.3, routing_weight_decay=0.1,
           weight_decay=0.01, warmup_fraction=0.0, schedule="constant", clip_grad_norm=0.5)


def _batch(task_ids):
  return {"encoder_input_tokens": ENC, "decoder_input_tokens": DEC,
          "decoder_target_tokens": TARGETS, "decoder_loss_weights": (TARGETS > 0).astype(np.int32),
          "task_ids": np.asarray(task_ids, np.int32)}


@functools.lru_cache(maxsize=None)
def _jitted_step(adapter, sparse):
  """(optimizer, jitted step) for the whole module: one compile per state structure."""
  opt = make_optimizer(OptimizerConfig(sparse_routing=sparse, **OPT), total_steps=10)
  return opt, jax.jit(make_train_step(T5(CONFIG, adapter=adapter), opt))


def _run(adapter, method, sparse, id_batches):
  """Trains from the same random parameters; returns (states after each step, metrics)."""
  params = random_params(CONFIG, adapter, seed=3)
  opt, step = _jitted_step(adapter, sparse)
  state = TrainState.create(params, methods.trainable_predicate(method, "multitask"), opt.tx,
                            jax.random.PRNGKey(0))
  states, metrics = [], []
  for ids in id_batches:
    state, m = step(state, _batch(ids))
    states.append(state)
    metrics.append(m)
  return states, metrics


def _row_moment(opt_state, moment, key):
  """The Adam moment ('mu' or 'nu') of routing table `key` in `row_sparse_adamw`'s state."""
  found = [x for path, x in jax.tree_util.tree_leaves_with_path(opt_state)
           if jax.tree_util.GetAttrKey(moment) in path and jax.tree_util.DictKey(key) in path]
  assert len(found) == 1, (moment, key, len(found))
  return np.asarray(found[0])


def _adapter(heads, shared=False, n_tasks=3):
  return AdapterConfig(kind="poly", rank=2, n_tasks=n_tasks, n_skills=3, n_heads=heads,
                       target_modules="attention", shared_routing=shared, dropout=0.0)


@pytest.mark.parametrize("heads,shared,method", [(2, False, "mhr"), (1, True, "poly"),
                                                 (2, False, "mhr_z")])
def test_equals_dense_adamw_when_every_step_sees_every_task(heads, shared, method):
  adapter = _adapter(heads, shared)
  ids = [[2, 0, 1, 2], [1, 1, 0, 2], [0, 2, 1, 0]]
  dense, dense_metrics = _run(adapter, method, False, ids)
  sparse, sparse_metrics = _run(adapter, method, True, ids)
  assert float(dense_metrics[0]["grad_norm"]) > OPT["clip_grad_norm"]  # the clip acted
  for d, s, dm, sm in zip(dense, sparse, dense_metrics, sparse_metrics):
    np.testing.assert_allclose(float(sm["loss"]), float(dm["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(sm["grad_norm"]), float(dm["grad_norm"]), rtol=1e-5)
    assert set(s.trainable) == set(d.trainable)
    for k in d.trainable:
      np.testing.assert_allclose(np.asarray(s.trainable[k]), np.asarray(d.trainable[k]),
                                 rtol=1e-5, atol=1e-6, err_msg=k)
  routing = [k for k in dense[-1].trainable if param_tree.is_routing_path(k)]
  assert routing and all(
      np.abs(np.asarray(dense[-1].trainable[k]) - np.asarray(dense[0].trainable[k])).max() > 1e-3
      for k in routing)


def test_rows_of_absent_tasks_keep_parameters_and_moments():
  adapter = _adapter(2, n_tasks=5)
  ids = [[2, 0, 1, 2], [0, 0, 2, 2]]  # step 2 has no task 1; tasks 3 and 4 never appear
  dense, _ = _run(adapter, "mhr", False, ids)
  sparse, _ = _run(adapter, "mhr", True, ids)
  for k in sparse[0].trainable:
    if not param_tree.is_routing_path(k):
      np.testing.assert_allclose(np.asarray(sparse[1].trainable[k]),
                                 np.asarray(dense[1].trainable[k]), rtol=1e-5, atol=1e-6)
      continue
    before, after = np.asarray(sparse[0].trainable[k]), np.asarray(sparse[1].trainable[k])
    np.testing.assert_array_equal(after[[1, 3, 4]], before[[1, 3, 4]])
    for moment in ("mu", "nu"):
      m0, m1 = (_row_moment(s.opt_state, moment, k) for s in sparse[:2])
      np.testing.assert_array_equal(m1[[1, 3, 4]], m0[[1, 3, 4]])
      assert not np.any(m1[[3, 4]])
    # Present rows follow dense AdamW; dense AdamW also moves absent task 1 (momentum).
    np.testing.assert_allclose(after[[0, 2]], np.asarray(dense[1].trainable[k])[[0, 2]],
                               rtol=1e-5, atol=1e-6)
    dense_row1 = np.asarray(dense[1].trainable[k])[1] - np.asarray(dense[0].trainable[k])[1]
    assert np.abs(dense_row1).max() > 1e-3


def test_batch_rows_renumber_task_ids_into_distinct_rows():
  rng = np.random.default_rng(0)
  table = rng.normal(size=(50, 2, 3)).astype(np.float32)
  for ids in (rng.integers(0, 50, 16), np.full(16, 7), np.arange(16)[::-1]):
    rows, local = sparse_routing.batch_rows(jnp.asarray(ids, jnp.int32), 50)
    rows, local = np.asarray(rows), np.asarray(local)
    real = rows[rows < 50]
    assert sorted(real) == sorted(set(ids.tolist())) and len(real) == len(set(real))
    assert np.sum(rows == 50) == len(ids) - len(real)  # the rest is padding
    gathered = np.asarray(sparse_routing.gather_rows(jnp.asarray(table), rows))
    np.testing.assert_array_equal(gathered[local], table[ids])
    assert np.isnan(gathered[rows == 50]).all()


def test_an_out_of_range_task_id_poisons_the_loss_as_the_dense_step_does():
  adapter = _adapter(2)
  for sparse in (False, True):
    for bad_id in (3, -1):  # one past the table, and negative
      _, metrics = _run(adapter, "mhr", sparse, [[0, bad_id, 1, 2]])
      assert np.isnan(float(metrics[0]["loss"])), (sparse, bad_id)


def test_sparse_routing_refuses_adafactor_and_routers_check_their_rows():
  with pytest.raises(ValueError, match=r"sparse_routing=True needs optimizer name='adamw'.*"
                                       r"'adafactor'"):
    OptimizerConfig(name="adafactor", sparse_routing=True)
  adapter = _adapter(2)
  params = random_params(CONFIG, adapter, seed=0)
  model = T5(CONFIG, adapter=adapter)
  bad = jax.tree_util.tree_map_with_path(
      lambda kp, x: x[:, :1] if kp[-1].key == "routing_logits" else x, params)
  with pytest.raises(ValueError, match=r"routing_logits has shape \(3, 1, 3\).*n_heads=2"):
    model.apply({"params": bad}, ENC, DEC, task_ids=jnp.zeros((4,), jnp.int32))
