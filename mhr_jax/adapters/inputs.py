"""The contract between a projection and its adapter: routing context and interface."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class AdapterInputs:
  """Per-call routing context, threaded through the model to each projection.

  Attributes:
    task_ids: [batch] int32, the task of each example (row of the routing Z).
    routing_weights: optional [batch, n_heads, n_skills] weights computed once
      by a router shared across layers; None when each layer routes itself.
    single_task: static; all examples share `task_ids[0]`, so routed adapters
      mix their skills once and apply one LoRA to the whole batch.
    deterministic: static; evaluation mode (sigmoid routing, no dropout).
  """

  task_ids: jax.Array
  routing_weights: Optional[jax.Array] = None
  single_task: bool = struct.field(pytree_node=False, default=False)
  deterministic: bool = struct.field(pytree_node=False, default=True)


class ProjectionAdapter(nn.Module):
  """Base of every adapter module; the projection calls it as
  `layer(x, y, adapter_inputs, kernel=kernel) -> y'` with x [b, l, in] and
  y = x @ kernel [b, l, out].
  """

  config: Any  # AdapterConfig
  in_features: int
  out_features: int
  kernel_axes: tuple[str, str]
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
