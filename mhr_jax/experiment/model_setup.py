"""Builds a stage's model parameters, laid out by the stage's Partitioner."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mhr_jax import param_tree
from mhr_jax.models import T5
from mhr_jax.partitioning import Partitioner, make_mesh


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


def abstract_params(model: T5) -> Any:
  """The parameters' shapes and logical axes (boxed ShapeDtypeStructs); no memory used."""
  return jax.eval_shape(_init_fn(model), jax.random.PRNGKey(0))


def param_shardings(model: T5, partitioner: Partitioner) -> dict:
  """{...nested params...: NamedSharding} of `model` under `partitioner`'s rules."""
  return partitioner.param_shardings(abstract_params(model))


def init_params(model: T5, rng: jax.Array, partitioner: Optional[Partitioner] = None) -> dict:
  """Random parameters (unboxed); laid out by `partitioner` when given, else on one device."""
  partitioner = partitioner or Partitioner(make_mesh(devices=jax.devices()[:1]))
  params, _ = partitioner.init(_init_fn(model), rng)
  return params


def place_params(model: T5, params: Mapping[str, Any], partitioner: Partitioner) -> dict:
  """Puts an existing tree of `model`'s parameters on the mesh by their logical axes."""
  return partitioner.place(nn.meta.unbox(params), param_shardings(model, partitioner))


def fill_from(target: Mapping[str, Any], source: Mapping[str, Any]) -> dict:
  """Copies every array of `source` whose path exists in `target` (shape-checked).

  Used to put pretrained backbone weights into a freshly initialised tree
  that also holds new adapter parameters; each copy keeps the target's sharding.
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
