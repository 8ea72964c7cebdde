"""A bf16 backbone with float32 adapters: each role keeps its own dtype through training."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhr_jax.adapters import methods
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.experiment.model_setup import abstract_params, init_params
from mhr_jax.models import T5, T5Config
from mhr_jax.training.optimizer import OptimizerConfig, make_optimizer
from mhr_jax import param_tree
from mhr_jax.param_tree import flatten as flatten_params
from mhr_jax.training.state import TrainState
from mhr_jax.training.step import make_train_step

CONFIG = T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                  scale_decoder_outputs=False, dropout_rate=0.0, dtype="bfloat16",
                  param_dtype="bfloat16")
ADAPTER = AdapterConfig(kind="poly", rank=2, n_tasks=3, n_skills=2, n_heads=2,
                        target_modules="qv")


def test_mhr_trains_f32_skills_and_routing_next_to_a_bf16_backbone():
  model = T5(CONFIG, adapter=ADAPTER)
  params = init_params(model, jax.random.PRNGKey(0))
  optimizer = make_optimizer(OptimizerConfig(learning_rate=3e-2, warmup_fraction=0.0,
                                             schedule="constant"), 10)
  state = TrainState.create(params, methods.trainable_predicate("mhr", stage="multitask"),
                            optimizer.tx, jax.random.PRNGKey(1))
  groups = {param_tree.role_of(k).value for k in state.trainable}
  assert groups == {"skills", "routing"}
  assert {v.dtype for v in state.trainable.values()} == {jnp.dtype(jnp.float32)}
  assert {v.dtype for v in state.frozen.values()} == {jnp.dtype(jnp.bfloat16)}
  frozen_before = jax.tree.map(np.asarray, state.frozen)

  rng = np.random.default_rng(0)
  batch = {"encoder_input_tokens": rng.integers(2, 32, (4, 6), dtype=np.int32),
           "decoder_input_tokens": rng.integers(2, 32, (4, 5), dtype=np.int32),
           "decoder_target_tokens": rng.integers(2, 32, (4, 5), dtype=np.int32),
           "decoder_loss_weights": np.ones((4, 5), np.int32),
           "task_ids": np.array([0, 1, 2, 0], np.int32)}
  step = jax.jit(make_train_step(model, optimizer))
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.05, losses
  # The updates stay float32 (a bf16 skill would round most 1e-3 steps away).
  assert {v.dtype for v in state.trainable.values()} == {jnp.dtype(jnp.float32)}
  for k, v in state.frozen.items():
    assert v.dtype == jnp.bfloat16 and np.array_equal(np.asarray(v), frozen_before[k]), k


def test_adaptation_adapters_are_f32_on_a_bf16_backbone():
  model = T5(CONFIG, adapter=ADAPTER)
  params = nn.meta.unbox(abstract_params(model))
  for method in ("lora", "ia3", "mhr_mu", "mhr"):
    config, adapted = methods.init_adaptation_params(method, _zeros(params), ADAPTER)
    flat = flatten_params(adapted)
    trained = methods.trainable_predicate(method)
    assert {flat[k].dtype for k in flat if trained(k)} == {jnp.dtype(jnp.float32)}, method
    assert {flat[k].dtype for k in flat if not trained(k)} == {jnp.dtype(jnp.bfloat16)}, method
    # The model built from the returned config creates the same dtypes itself.
    fresh = flatten_params(nn.meta.unbox(abstract_params(T5(CONFIG, adapter=config))))
    assert {k: v.dtype for k, v in fresh.items()} == {k: v.dtype for k, v in flat.items()}


def _zeros(tree):
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), tree)
