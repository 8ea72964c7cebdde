"""Methods: what each trains (gradients, optimizer updates and state), how adaptation
parameters are built from multi-task ones, μ-averaging, parameter counts."""

from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhr_jax import errors, param_tree
from mhr_jax.adapters import methods
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.models import T5
from mhr_jax.training.optimizer import OptimizerConfig, make_optimizer
from mhr_jax.training.state import TrainState
from tests.utils import DEC, ENC, random_params, tiny_config

CONFIG = tiny_config(num_layers=1)
IDS = np.array([0, 0, 0, 0], np.int32)  # adaptation: the new task is task 0
# Constant rates and no warmup, so Adam's first update is about the rate itself.
OPTIMIZER = make_optimizer(OptimizerConfig(learning_rate=1e-2, routing_learning_rate=0.5,
                                           weight_decay=0.1, warmup_fraction=0.0,
                                           schedule="constant"), total_steps=10).tx
REQUIRED = ("lora", "shared_lora", "poly", "mhr", "mhr_z", "mhr_mu", "poly_mu", "ia3", "full")


def _mt_adapter(heads: int, kind: str = "poly", **kw) -> AdapterConfig:
  return AdapterConfig(kind=kind, rank=2, n_tasks=3, n_skills=3, n_heads=heads,
                       target_modules="attention", **kw)


def _multitask(method: str):
  """(adapter config, params) of the multi-task stage that `method` adapts from (B random)."""
  m = methods.get_method(method)
  if m.multitask in (None, methods.Multitask.ROUTED_SKILLS):  # fresh ones go on a poly checkpoint
    adapter = _mt_adapter(1 if m.heads is methods.Heads.ONE else 2)
  elif m.multitask is methods.Multitask.SHARED_LORA:
    adapter = _mt_adapter(1, kind="lora")
  elif m.multitask == "shared_ia3":
    adapter = AdapterConfig(kind="ia3", target_modules="ia3")
  else:
    adapter = None
  return adapter, random_params(CONFIG, adapter, seed=0)


def _shapes(adapter):
  tree = jax.eval_shape(lambda: T5(CONFIG, adapter=adapter).init(
      {"params": jax.random.PRNGKey(0), "routing": jax.random.PRNGKey(0)}, ENC[:1], DEC[:1],
      task_ids=jnp.zeros((1,), jnp.int32))["params"])
  return jax.tree.map(lambda x: (x.shape, x.dtype), flax.core.meta.unbox(tree))


def _flat(tree):
  return param_tree.flatten(tree)


def test_method_table_names_and_errors():
  assert set(REQUIRED) <= set(methods.METHODS)
  with pytest.raises(ValueError, match=r"method='mhr-z'.*'mhr_z'"):
    methods.get_method("mhr-z")
  with pytest.raises(ValueError, match="'lora' trains a fresh adapter.*no multi-task stage"):
    methods.trainable_predicate("lora", stage="multitask")


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_adaptation_params_fit_the_adapted_model(method):
  mt_adapter, mt_params = _multitask(method)
  adapter, params = methods.init_adaptation_params(method, mt_params, mt_adapter,
                                                   rng=jax.random.PRNGKey(1))
  expected = _shapes(adapter)
  got = jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), params)
  assert jax.tree.structure(got) == jax.tree.structure(expected)
  assert all(a == b for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected),
                                    strict=True))
  flat, mt_flat = _flat(params), _flat(mt_params)
  m = methods.get_method(method)
  for path, x in flat.items():
    group = param_tree.role_of(path)
    if group == "backbone" or group == "skills":  # carried over unchanged
      np.testing.assert_array_equal(np.asarray(x), np.asarray(mt_flat[path]))
    elif group == "routing":  # one fresh row U(-1e-3, 1e-3)
      assert x.shape[-3] == 1 and 0 < np.abs(x).max() <= 1e-3
    elif m.adaptation == "continue":  # the shared LoRA / (IA)^3 continues
      np.testing.assert_array_equal(np.asarray(x), np.asarray(mt_flat[path]))
    elif m.adaptation == "fresh" and path.endswith("lora_b"):
      assert not np.any(np.asarray(x))
    elif path.endswith("ia3_scale"):
      np.testing.assert_array_equal(np.asarray(x), 1.0)
  if method == "full":
    assert adapter is None


def test_mean_routing_init_copies_the_mean_training_row():
  mt_adapter, mt_params = _multitask("mhr")
  _, params = methods.init_adaptation_params("mhr_z", mt_params, mt_adapter,
                                             routing_init="mean", n_new_tasks=2)
  for path, z in _flat(params).items():
    if path.endswith("routing_logits"):
      mean = np.asarray(_flat(mt_params)[path]).mean(0)
      np.testing.assert_allclose(np.asarray(z), np.stack([mean, mean]), rtol=1e-6)


def test_adaptation_rejects_a_mismatched_checkpoint():
  mt_adapter, mt_params = _multitask("poly")  # one head
  # The project's config errors: run.py prints them as one line (errors.MhrJaxError).
  with pytest.raises(errors.ConfigError, match="'mhr_z' does not fit a checkpoint with n_heads=1"):
    methods.init_adaptation_params("mhr_z", mt_params, mt_adapter)
  with pytest.raises(errors.ConfigError, match="n_heads > 1, got n_heads=1"):
    methods.multitask_adapter_config("mhr", AdapterConfig(n_heads=1), n_tasks=4)
  assert methods.multitask_adapter_config("poly", AdapterConfig(n_heads=4), 7) == \
      AdapterConfig(n_heads=1, n_tasks=7)
  assert methods.multitask_adapter_config("full", AdapterConfig(), 7) is None


# --- Gradients, updates, optimizer state ----------------------------------------

# Methods grouped by the model they adapt (the same gradients serve a group).
GROUPS = [("mhr", "mhr_z"), ("poly", "poly_z"), ("mhr_mu", "shared_lora", "lora"),
          ("ia3",), ("full",)]


def _adapted(method):
  mt_adapter, mt_params = _multitask(method)
  adapter, params = methods.init_adaptation_params(method, mt_params, mt_adapter)
  # Random LoRA B / (IA)^3 vectors, so that every trained array gets a gradient.
  rng = np.random.default_rng(5)
  params = jax.tree_util.tree_map_with_path(
      lambda kp, x: rng.normal(1.0, 0.3, x.shape).astype(np.float32)
      if kp[-1].key in ("lora_b", "ia3_scale") else x, params)
  return adapter, params


def _grads(adapter, params):
  model = T5(CONFIG, adapter=adapter)
  weights = np.random.default_rng(0).normal(size=(4, 4, CONFIG.vocab_size)).astype(np.float32)
  loss = lambda p: jnp.sum(model.apply({"params": p}, ENC, DEC, task_ids=IDS) * weights)
  return jax.grad(loss)(params)  # eager: op compilations are shared between tests


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: "+".join(g))
def test_gradients_and_updates_touch_exactly_the_trained_parameters(group):
  adapter, params = _adapted(group[0])
  grads = _grads(adapter, params)
  for method in group:
    if method != group[0]:
      adapter_m, params_m = _adapted(method)
      assert jax.tree.structure(params_m) == jax.tree.structure(params), method
    mask = _flat(methods.trainable_mask(method, params))
    trained = {k for k, v in mask.items() if v}
    expected_groups = methods.get_method(method).adapt_trains
    assert trained == {k for k in mask if param_tree.role_of(k) in expected_groups}
    assert trained, method
    for path, g in _flat(grads).items():
      if path in trained:
        assert np.abs(np.asarray(g)).max() > 0, f"{method}: no gradient on {path}"

    # The stages' optimizer runs over the trainable split of the state only.
    state = TrainState.create(params, methods.trainable_predicate(method), OPTIMIZER,
                              jax.random.PRNGKey(0))
    assert set(state.trainable) == trained
    flat_grads = _flat(grads)
    updates, _ = jax.jit(OPTIMIZER.update)({k: flat_grads[k] for k in state.trainable},
                                           state.opt_state, state.trainable)
    for path, u in updates.items():
      assert np.abs(np.asarray(u)).max() > 0, f"{method}: no update on {path}"
      if param_tree.role_of(path) == "routing":
        assert 0.3 < np.abs(np.asarray(u)).max() <= 0.5 + 1e-6  # Adam's first step ~ lr
      else:
        assert np.abs(np.asarray(u)).max() < 0.1
    # The frozen parameters carry no optimizer state: only Adam's two moments
    # of the trained arrays (plus step counters) are stored.
    n_trained = methods.count_parameters(params, mask=lambda p: p in trained)
    n_state = sum(np.size(x) for x in jax.tree.leaves(state.opt_state))
    assert 2 * n_trained <= n_state <= 2 * n_trained + 8, method


def test_a_tree_with_nothing_to_train_is_refused():
  backbone = random_params(CONFIG, None)
  with pytest.raises(ValueError, match="no trainable parameters"):
    TrainState.create(backbone, methods.trainable_predicate("mhr_z"), OPTIMIZER,
                      jax.random.PRNGKey(0))


def test_adafactor_and_schedules_update_the_trainable_split():
  adapter, params = _adapted("mhr")
  for schedule in ("linear", "cosine", "constant"):
    opt = make_optimizer(OptimizerConfig(name="adafactor", schedule=schedule,
                                         warmup_fraction=0.2), total_steps=10)
    tx, lr = opt.tx, opt.learning_rate
    assert float(lr(0)) == 0.0 and float(lr(2)) == pytest.approx(1e-3)
    state = TrainState.create(params, methods.trainable_predicate("mhr"), tx,
                              jax.random.PRNGKey(0))
    grads = jax.tree.map(jnp.ones_like, state.trainable)
    updates, _ = jax.jit(tx.update)(grads, state.opt_state, state.trainable)
    assert all(np.isfinite(np.asarray(u)).all() for u in updates.values())


# --- μ-averaging ------------------------------------------------------------------


def _logits(adapter, params, ids=IDS):
  return np.asarray(T5(CONFIG, adapter=adapter).apply({"params": params}, ENC, DEC,
                                                      task_ids=jnp.asarray(ids)))


def test_mu_uniform_is_the_poly_model_with_uniform_routing():
  mt_adapter, mt_params = _multitask("mhr")
  lora, mu = methods.mu_params(mt_params, mt_adapter, average="uniform")
  assert lora.kind == "lora" and lora.scale == mt_adapter.scale
  uniform = jax.tree_util.tree_map_with_path(
      lambda kp, x: np.zeros_like(x) if kp[-1].key == "routing_logits" else x, mt_params)
  np.testing.assert_allclose(_logits(lora, mu), _logits(mt_adapter, uniform, [0, 1, 2, 1]),
                             atol=1e-5)
  # Plain means, head block by head block.
  flat, mt = _flat(mu), _flat(mt_params)
  a = np.asarray(flat["encoder/layers_0/attention/query/adapter/lora_a"])
  skills = np.asarray(mt["encoder/layers_0/attention/query/adapter/skill_lora_a"])
  np.testing.assert_allclose(a, skills.mean(1).reshape(a.shape), rtol=1e-6, atol=1e-7)


def test_mu_routing_average_is_the_poly_model_at_the_mean_routing():
  mt_adapter, mt_params = _multitask("mhr")
  # With one training task the mean routing is that task's: μ equals the task's adapter.
  one_task = mt_adapter.replace(n_tasks=1)
  params = jax.tree_util.tree_map_with_path(
      lambda kp, x: x[:1] if kp[-1].key == "routing_logits" else x, mt_params)
  lora, mu = methods.init_adaptation_params("mhr_mu", params, one_task, mu_average="routing")
  np.testing.assert_allclose(_logits(lora, mu), _logits(one_task, params), atol=1e-5)


# --- Parameter counts ---------------------------------------------------------------


def _projections(config):
  """(in, out) of every attention projection of the model."""
  e, inner = config.d_model, config.num_heads * config.d_kv
  attention = [(e, inner)] * 3 + [(inner, e)]
  return attention * (config.num_layers + 2 * config.num_decoder_layers)


def test_parameter_counts_match_closed_forms():
  c = CONFIG
  backbone = methods.count_parameters(random_params(c, None))
  projections = _projections(c)
  for adapter, per_layer, once in [
      (_mt_adapter(2), lambda i, o: 3 * (i * 2 + 2 * o) + 3 * 2 * 3, 0),
      (_mt_adapter(1), lambda i, o: 3 * (i * 2 + 2 * o) + 3 * 1 * 3, 0),
      (_mt_adapter(2, shared_routing=True), lambda i, o: 3 * (i * 2 + 2 * o), 3 * 2 * 3),
      (_mt_adapter(1, kind="lora"), lambda i, o: i * 2 + 2 * o, 0),
      (AdapterConfig(kind="ia3", target_modules="attention"), lambda i, o: o, 0),
  ]:
    params = random_params(c, adapter)
    expected = sum(per_layer(i, o) for i, o in projections) + once
    assert methods.count_parameters(params) - backbone == expected, adapter
    assert methods.count_parameters(params, lambda p: param_tree.role_of(p) != "backbone") \
        == expected
  # And by method mask: mhr_z trains exactly the routing rows.
  adapter, params = _adapted("mhr_z")
  mask = methods.trainable_mask("mhr_z", params)
  assert methods.count_parameters(params, mask) == len(projections) * 1 * 2 * 3
