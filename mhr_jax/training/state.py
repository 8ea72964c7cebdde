"""Train state: the trainable/frozen split of the parameters plus optimizer state.

Parameters are kept as flat dicts keyed by '/'-joined paths
('encoder/layers_0/attention/query/kernel'). Only the trainable half is
differentiated and carries optimizer state; the frozen backbone carries none.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mhr_jax.param_tree import flatten, unflatten

FlatParams = dict[str, jax.Array]


def split_params(params: Mapping[str, Any],
                 is_trainable: Callable[[str], bool]) -> tuple[FlatParams, FlatParams]:
  """Splits a nested tree into (trainable, frozen) flat dicts by path."""
  flat = flatten(params)
  trainable = {k: v for k, v in flat.items() if is_trainable(k)}
  frozen = {k: v for k, v in flat.items() if not is_trainable(k)}
  if not trainable:
    raise ValueError("no trainable parameters: the method's mask selected none of "
                     f"{len(flat)} parameters (e.g. {sorted(flat)[:3]})")
  return trainable, frozen


def merge_params(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict[str, Any]:
  return unflatten({**frozen, **trainable})


@struct.dataclass
class TrainState:
  """Everything that changes during training (and is checkpointed)."""

  step: jax.Array
  trainable: FlatParams
  frozen: FlatParams
  opt_state: optax.OptState
  rng: jax.Array

  @property
  def params(self) -> dict[str, Any]:
    """The full nested parameter tree."""
    return merge_params(self.trainable, self.frozen)

  @classmethod
  def create(cls, params: Mapping[str, Any], is_trainable: Callable[[str], bool],
             optimizer: optax.GradientTransformation, rng: jax.Array) -> "TrainState":
    trainable, frozen = split_params(params, is_trainable)
    return cls(step=jnp.zeros((), jnp.int32), trainable=trainable, frozen=frozen,
               opt_state=optimizer.init(trainable), rng=rng)
