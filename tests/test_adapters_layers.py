"""Adapter layers against written-out formulas, and the model-level routing invariants."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.adapters.inputs import AdapterInputs
from mhr_jax.adapters.lora import LoraAdapter
from mhr_jax.adapters.poly import PolyAdapter
from mhr_jax.models import T5
from tests.utils import DEC, ENC, random_params, tiny_config

IN, OUT, RANK, N_TASKS, N_SKILLS = 8, 12, 3, 4, 3
TASKS = np.array([3, 0, 3], np.int32)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _poly_layer_inputs(n_heads, seed=0, n_skills=N_SKILLS):
  rng = np.random.default_rng(seed)
  d, e = IN // n_heads, OUT // n_heads
  params = {"skill_lora_a": rng.normal(0, 0.5, (n_heads, n_skills, d, RANK)),
            "skill_lora_b": rng.normal(0, 1.0, (n_heads, n_skills, RANK, e)),
            "router": {"routing_logits": rng.normal(0, 2.0, (N_TASKS, n_heads, n_skills))}}
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  x = rng.normal(size=(len(TASKS), 5, IN)).astype(np.float32)
  y = rng.normal(size=(len(TASKS), 5, OUT)).astype(np.float32)
  return params, x, y


def _apply(layer, params, x, y, inputs, rngs=None):
  return np.asarray(jax.jit(lambda p, x, y, i: layer.apply({"params": p}, x, y, i, rngs=rngs))(
      params, x, y, inputs))


def _reference_mhr(params, x, y, task_ids, scaling):
  """Written per head: y + concat_h[(Σ_h' x_h' A_{t,h'}) B_{t,h}] · scaling."""
  a, b = params["skill_lora_a"], params["skill_lora_b"]
  n_heads, _, d, _ = a.shape
  z = params["router"]["routing_logits"]
  out = y.astype(np.float64).copy()
  for i, t in enumerate(task_ids):
    w = _sigmoid(z[t]) / _sigmoid(z[t]).sum(-1, keepdims=True)  # [h, s]
    a_t = [np.einsum("s,sdr->dr", w[h], a[h]) for h in range(n_heads)]
    b_t = [np.einsum("s,sre->re", w[h], b[h]) for h in range(n_heads)]
    low_rank = sum(x[i][:, h * d:(h + 1) * d] @ a_t[h] for h in range(n_heads))  # [l, r]
    out[i] += np.concatenate([low_rank @ b_t[h] for h in range(n_heads)], -1) * scaling
  return out


def _reference_poly(params, x, y, task_ids, scaling):
  """Polytropon: y + x (Σ_s w_s A_s) (Σ_s w_s B_s) · scaling (one head)."""
  a, b = params["skill_lora_a"][0], params["skill_lora_b"][0]
  z = params["router"]["routing_logits"][:, 0]
  out = y.astype(np.float64).copy()
  for i, t in enumerate(task_ids):
    w = _sigmoid(z[t]) / _sigmoid(z[t]).sum()
    out[i] += x[i] @ np.einsum("s,sdr->dr", w, a) @ np.einsum("s,sre->re", w, b) * scaling
  return out


@pytest.mark.parametrize("n_heads", [1, 2, 4])
def test_poly_layer_matches_the_mhr_formula(n_heads):
  cfg = AdapterConfig(kind="poly", rank=RANK, n_tasks=N_TASKS, n_skills=N_SKILLS,
                      n_heads=n_heads, scaling=0.7)
  params, x, y = _poly_layer_inputs(n_heads)
  got = _apply(PolyAdapter(cfg, IN, OUT, ("embed", "mlp")), params, x, y,
               AdapterInputs(task_ids=jnp.asarray(TASKS)))
  np.testing.assert_allclose(got, _reference_mhr(params, x, y, TASKS, 0.7), atol=1e-5)
  if n_heads == 1:  # MHR with one head is Polytropon
    np.testing.assert_allclose(got, _reference_poly(params, x, y, TASKS, 0.7), atol=1e-5)


@pytest.mark.parametrize("n_heads", [1, 2])
def test_one_skill_with_any_routing_is_plain_lora(n_heads):
  """With |Φ| = 1 the normalised weight is 1 whatever Z (or its Gumbel sample) is."""
  cfg = AdapterConfig(kind="poly", rank=RANK, n_tasks=N_TASKS, n_skills=1, n_heads=n_heads)
  params, x, y = _poly_layer_inputs(n_heads, n_skills=1)
  got = _apply(PolyAdapter(cfg, IN, OUT, ("embed", "mlp")), params, x, y,
               AdapterInputs(task_ids=jnp.asarray(TASKS), deterministic=False),
               rngs={"routing": jax.random.PRNGKey(0)})
  a, b = params["skill_lora_a"][:, 0], params["skill_lora_b"][:, 0]  # [h, d, r], [h, r, e]
  lora = {"lora_a": a.reshape(IN, RANK), "lora_b": np.concatenate(list(b), axis=-1)}
  expected = _apply(LoraAdapter(cfg.replace(kind="lora"), IN, OUT, ("embed", "mlp")), lora,
                    x, y, AdapterInputs(task_ids=jnp.asarray(TASKS)))
  np.testing.assert_allclose(got, expected, atol=1e-5)
  np.testing.assert_allclose(expected, y + x @ lora["lora_a"] @ lora["lora_b"] / RANK,
                             atol=1e-5)


def test_single_task_layer_path_equals_mixed_path():
  cfg = AdapterConfig(kind="poly", rank=RANK, n_tasks=N_TASKS, n_skills=N_SKILLS, n_heads=2)
  params, x, y = _poly_layer_inputs(2, seed=4)
  layer = PolyAdapter(cfg, IN, OUT, ("embed", "mlp"))
  same = jnp.full((3,), 2, jnp.int32)
  np.testing.assert_allclose(
      _apply(layer, params, x, y, AdapterInputs(task_ids=same, single_task=True)),
      _apply(layer, params, x, y, AdapterInputs(task_ids=same)), atol=1e-5)


def test_poly_layer_in_bfloat16_keeps_the_activation_dtype():
  cfg = AdapterConfig(kind="poly", rank=RANK, n_tasks=N_TASKS, n_skills=N_SKILLS, n_heads=2)
  params, x, y = _poly_layer_inputs(2, seed=5)
  layer = PolyAdapter(cfg, IN, OUT, ("embed", "mlp"), dtype=jnp.bfloat16)
  out = jax.jit(lambda p, x, y: layer.apply({"params": p}, x, y, AdapterInputs(
      task_ids=jnp.asarray(TASKS))))(params, x.astype(jnp.bfloat16), y.astype(jnp.bfloat16))
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out, np.float32),
                             _reference_mhr(params, x, y, TASKS, 1 / RANK), atol=0.1)


def test_lora_dropout_only_in_training():
  cfg = AdapterConfig(kind="lora", rank=RANK, dropout=0.5)
  rng = np.random.default_rng(0)
  params = {"lora_a": rng.normal(size=(IN, RANK)).astype(np.float32),
            "lora_b": rng.normal(size=(RANK, OUT)).astype(np.float32)}
  _, x, y = _poly_layer_inputs(1)
  layer = LoraAdapter(cfg, IN, OUT, ("embed", "mlp"))
  ids = jnp.asarray(TASKS)
  expected = y + x @ params["lora_a"] @ params["lora_b"] / RANK
  np.testing.assert_allclose(_apply(layer, params, x, y, AdapterInputs(task_ids=ids)),
                             expected, atol=1e-5)
  train = _apply(layer, params, x, y, AdapterInputs(task_ids=ids, deterministic=False),
                 rngs={"dropout": jax.random.PRNGKey(0)})
  assert np.abs(train - expected).max() > 1e-2


# --- Whole model ---------------------------------------------------------------

MODEL_IDS = np.array([2, 0, 1, 2], np.int32)


def _logits(config, adapter, params, task_ids, **kwargs):
  return np.asarray(T5(config, adapter=adapter).apply(
      {"params": params}, ENC, DEC, task_ids=jnp.asarray(task_ids), **kwargs))


@pytest.mark.parametrize("shared", [False, True])
def test_model_single_task_path_equals_mixed_path(shared):
  config = tiny_config()
  adapter = AdapterConfig(kind="poly", rank=2, n_tasks=3, n_skills=3, n_heads=2,
                          target_modules="all_linear", shared_routing=shared)
  params = random_params(config, adapter, seed=1)
  same = np.full_like(MODEL_IDS, 1)
  fast = _logits(config, adapter, params, same, single_task=True)
  np.testing.assert_allclose(fast, _logits(config, adapter, params, same), atol=1e-5)
  assert np.abs(fast - _logits(config, adapter, params, MODEL_IDS)).max() > 1e-3


def test_shared_routing_equals_per_layer_routing_with_the_same_table():
  config = tiny_config()
  shared = AdapterConfig(kind="poly", rank=2, n_tasks=3, n_skills=3, n_heads=2,
                         target_modules="all_linear", shared_routing=True)
  params = random_params(config, shared, seed=2)
  flat = flax.traverse_util.flatten_dict(params, sep="/")
  assert [k for k in flat if k.endswith("routing_logits")] == ["router/routing_logits"]
  z = flat.pop("router/routing_logits")
  per_layer = {**flat, **{k.replace("skill_lora_a", "router/routing_logits"): z
                          for k in flat if k.endswith("skill_lora_a")}}
  per_layer = flax.traverse_util.unflatten_dict(per_layer, sep="/")
  np.testing.assert_allclose(
      _logits(config, shared, params, MODEL_IDS),
      _logits(config, shared.replace(shared_routing=False), per_layer, MODEL_IDS), atol=1e-5)


def test_model_routing_is_stochastic_in_training_only():
  config = tiny_config()
  adapter = AdapterConfig(kind="poly", rank=2, n_tasks=3, n_skills=3, n_heads=2,
                          target_modules="qv")
  params = random_params(config, adapter, seed=3)
  model = T5(config, adapter=adapter)
  run = lambda key, deterministic: np.asarray(model.apply(
      {"params": params}, ENC, DEC, task_ids=jnp.asarray(MODEL_IDS),
      deterministic=deterministic, rngs={"routing": key, "dropout": key}))
  k0, k1 = jax.random.PRNGKey(0), jax.random.PRNGKey(1)
  assert np.abs(np.asarray(run(k0, False)) - np.asarray(run(k1, False))).max() > 1e-3
  np.testing.assert_array_equal(np.asarray(run(k0, False)), np.asarray(run(k0, False)))
  np.testing.assert_array_equal(np.asarray(run(k0, True)), np.asarray(run(k1, True)))
