"""What every adapted projection is told about the current batch."""

from __future__ import annotations

from typing import Optional

import jax
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
