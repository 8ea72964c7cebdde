"""Builds the model and its (sharded) parameters for a stage."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mhr_jax import param_tree, partitioning
from mhr_jax.models import T5, T5Config


def example_batch(batch_size: int, input_length: int, target_length: int) -> dict:
  """A zero batch with the shapes and dtypes of the real ones (for init/compile)."""
  return {
      "encoder_input_tokens": np.zeros((batch_size, input_length), np.int32),
      "decoder_input_tokens": np.zeros((batch_size, target_length), np.int32),
      "decoder_target_tokens": np.zeros((batch_size, target_length), np.int32),
      "decoder_loss_weights": np.zeros((batch_size, target_length), np.int32),
      "task_ids": np.zeros((batch_size,), np.int32),
  }


def _init_fn(model: T5, input_length: int = 8, target_length: int = 4):
  batch = example_batch(1, input_length, target_length)

  def init_fn(key):
    return model.init({"params": key, "routing": key, "dropout": key},
                      batch["encoder_input_tokens"], batch["decoder_input_tokens"],
                      task_ids=batch["task_ids"])["params"]

  return init_fn


def init_params(model: T5, rng: jax.Array, mesh: Optional[jax.sharding.Mesh] = None,
                rules=None) -> dict:
  """Random parameters (unboxed), placed on `mesh` by their logical axes when given."""
  init_fn = _init_fn(model)
  if mesh is None:
    return nn.meta.unbox(jax.jit(init_fn)(rng))
  params, _ = partitioning.init_sharded(init_fn, mesh, rules, rng)
  return params


def place_params(model: T5, params: Mapping[str, Any], mesh: jax.sharding.Mesh,
                 rules=None) -> dict:
  """Puts an existing tree of `model`'s parameters on `mesh` by their logical axes."""
  abstract = jax.eval_shape(_init_fn(model), jax.random.PRNGKey(0))
  kwargs = {} if rules is None else {"rules": rules}
  shardings = partitioning.param_shardings(abstract, mesh, **kwargs)
  return jax.device_put(nn.meta.unbox(params), shardings)


def fill_from(target: Mapping[str, Any], source: Mapping[str, Any]) -> dict:
  """Copies every array of `source` whose path exists in `target` (shape-checked).

  Used to put pretrained backbone weights into a freshly initialised tree
  that also holds new adapter parameters.
  """
  tgt, src = param_tree.flatten(target), param_tree.flatten(source)
  for k, v in src.items():
    if k in tgt:
      if tuple(tgt[k].shape) != tuple(v.shape):
        raise ValueError(f"shape mismatch for {k}: model expects {tuple(tgt[k].shape)}, "
                         f"checkpoint has {tuple(v.shape)}")
      sharding = getattr(tgt[k], "sharding", None)
      tgt[k] = jax.device_put(jnp.asarray(v, dtype=tgt[k].dtype), sharding)
  return param_tree.unflatten(tgt)
