"""Routing: relaxed-Bernoulli training samples (vs torch), sigmoid evaluation, task-id checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mhr_jax.adapters import routing
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.models import T5
from tests.utils import DEC, ENC, random_params, tiny_config


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_evaluation_weights_are_normalised_sigmoids():
  z = np.random.default_rng(0).normal(0, 2, (5, 2, 3)).astype(np.float32)
  w = np.asarray(routing.routing_weights(jnp.asarray(z), deterministic=True))
  expected = _sigmoid(z) / (_sigmoid(z).sum(-1, keepdims=True) + 1e-12)
  np.testing.assert_allclose(w, expected, rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_training_samples_follow_torch_relaxed_bernoulli(temperature):
  logits = np.array([-1.5, 0.0, 2.0], np.float32)
  n = 20000
  ours = np.asarray(jax.jit(routing.relaxed_bernoulli_sample, static_argnums=2)(
      jax.random.PRNGKey(0), jnp.broadcast_to(jnp.asarray(logits), (n, 3)), temperature))
  torch.manual_seed(0)
  theirs = torch.distributions.RelaxedBernoulli(
      torch.tensor(temperature), logits=torch.as_tensor(logits).expand(n, 3)).rsample().numpy()
  qs = np.linspace(0.1, 0.9, 9)
  np.testing.assert_allclose(np.quantile(ours, qs, axis=0), np.quantile(theirs, qs, axis=0),
                             atol=0.05)
  # Exactly: τ·logit(sample) - logits is standard-logistic noise.
  noise = temperature * np.log(ours / (1 - ours)) - logits
  np.testing.assert_allclose(np.quantile(noise, qs, axis=0),
                             np.repeat(np.log(qs / (1 - qs))[:, None], 3, 1), atol=0.06)


def test_router_is_stochastic_in_training_and_deterministic_in_evaluation():
  router = routing.Router(n_tasks=3, n_heads=2, n_skills=4, temperature=1.0)
  ids = jnp.array([0, 2, 2])
  z = jax.random.normal(jax.random.PRNGKey(1), (3, 2, 4))
  params = {"params": {"routing_logits": z}}
  sample = jax.jit(lambda key: router.apply(params, ids, deterministic=False,
                                            rngs={"routing": key}))
  train = lambda seed: np.asarray(sample(jax.random.PRNGKey(seed)))
  assert np.abs(train(0) - train(1)).max() > 1e-2
  np.testing.assert_array_equal(train(0), train(0))
  np.testing.assert_allclose(train(0).sum(-1), 1.0, rtol=1e-5)
  evaluation = np.asarray(jax.jit(lambda: router.apply(params, ids, deterministic=True))())
  s = _sigmoid(np.asarray(z)[np.asarray(ids)])
  np.testing.assert_allclose(evaluation, s / s.sum(-1, keepdims=True), rtol=1e-5)


def test_router_init_is_uniform_in_plus_minus_1e_3():
  variables = jax.jit(routing.Router(n_tasks=50, n_heads=2, n_skills=8).init)(
      jax.random.PRNGKey(0), jnp.zeros((1,), jnp.int32))
  z = np.asarray(jax.tree.leaves(variables)[0])
  assert z.shape == (50, 2, 8) and np.abs(z).max() <= 1e-3 and np.abs(z).max() > 9e-4


def test_straight_through_is_hard_forward_and_soft_backward():
  z = jnp.array([[[2.0, -1.0, 0.5, -3.0]]])
  w = routing.routing_weights(z, deterministic=True, straight_through=True)
  np.testing.assert_allclose(np.asarray(w), [[[0.5, 0.0, 0.5, 0.0]]], atol=1e-6)
  grad = jax.jit(jax.grad(lambda z: jnp.sum(routing.routing_weights(
      z, deterministic=True, straight_through=True) * jnp.array([0.3, 1.7, -0.4, 2.9]))))(z)
  assert np.all(np.asarray(grad) != 0)


def test_validate_task_ids_names_the_bad_ids():
  routing.validate_task_ids(np.array([0, 2]), 3)
  with pytest.raises(ValueError, match=r"task ids \[-1, 3\].*n_tasks=3.*0\.\.2"):
    routing.validate_task_ids(np.array([0, 3, -1]), 3)


def test_gather_fills_out_of_range_rows_with_nan_under_jit():
  z = jnp.arange(12.0).reshape(3, 2, 2)
  rows = np.asarray(jax.jit(routing.gather_routing_logits)(z, jnp.array([2, 3, -1, 0])))
  np.testing.assert_array_equal(rows[0], np.asarray(z[2]))
  np.testing.assert_array_equal(rows[3], np.asarray(z[0]))
  assert np.isnan(rows[1]).all() and np.isnan(rows[2]).all()


@pytest.mark.parametrize("straight_through", [False, True])
def test_bad_ids_give_nan_weights_in_training_mode_under_jit(straight_through):
  # XLA's CPU logistic can turn the NaN rows of bad ids finite; they must stay NaN.
  router = routing.Router(3, 2, 3, straight_through=straight_through)
  variables = router.init({"params": jax.random.PRNGKey(0)}, jnp.array([0]))
  apply = jax.jit(lambda ids: router.apply(variables, ids, deterministic=False,
                                           rngs={"routing": jax.random.PRNGKey(0)}))
  w = np.asarray(apply(jnp.array([0, 3, 2, -1])))
  assert np.isfinite(w[[0, 2]]).all() and np.isnan(w[[1, 3]]).all()


def test_out_of_range_task_id_raises_eagerly_and_under_jit_when_asked():
  config = tiny_config(num_layers=1)
  adapter = AdapterConfig(kind="poly", n_tasks=3, n_skills=2, n_heads=2,
                          target_modules=r"encoder/layers_0/attention/value")
  params = random_params(config, adapter)
  for in_jit in (True, False):
    model = T5(config, adapter=adapter, check_task_ids_in_jit=in_jit)
    run = lambda ids, model=model: model.apply({"params": params}, ENC, DEC, task_ids=ids)
    assert np.isfinite(np.asarray(run(jnp.array([0, 1, 2, 2])))).all()
    with pytest.raises(ValueError, match=r"task ids \[3\] are out of range.*n_tasks=3"):
      run(jnp.array([0, 1, 3, 2]))
    jitted = jax.jit(run)
    jitted(jnp.array([0, 1, 2, 2])).block_until_ready()
    if in_jit:
      with pytest.raises(Exception, match=r"task ids \[-1\] are out of range"):
        jitted(jnp.array([0, -1, 2, 2])).block_until_ready()
    else:  # no callback in the hot path: the bad example's outputs are NaN, the others not
      out = np.asarray(jitted(jnp.array([0, -1, 2, 2])))
      assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2, 3]]).all()


def test_routed_model_without_task_ids_raises_instead_of_reading_row_0():
  config = tiny_config(num_layers=1)
  adapter = AdapterConfig(kind="poly", n_tasks=3, n_skills=2,
                          target_modules=r"encoder/layers_0/attention/value")
  params = random_params(config, adapter)
  with pytest.raises(ValueError, match="routed adapters.*need task_ids"):
    T5(config, adapter=adapter).apply({"params": params}, ENC, DEC)
