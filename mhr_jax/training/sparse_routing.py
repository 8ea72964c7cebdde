"""Lazy (row-sparse) AdamW for the routing logits: a step costs O(batch), not O(n_tasks).

A batch touches only the rows of Z ∈ R^{|T| x h x |Φ|} of the tasks in it,
but a dense optimizer reads and writes all |T| rows of Z and of both Adam
moments on every step; with 10,000 tasks that is the bulk of the step. With
`OptimizerConfig.sparse_routing` the train step instead

  1. gathers the batch's distinct rows Z[rows] ([b, h, |Φ|], `batch_rows`)
     and runs the model on that sub-table with task ids renumbered into it,
  2. differentiates w.r.t. the sub-table (its gradient is the dense
     gradient's non-zero rows, so the global-norm clip is unchanged),
  3. applies AdamW to those rows only and scatters them back in place
     (`row_adamw`; the state is donated, so the scatter does not copy).

Rows of tasks absent from a batch keep their parameters and moments
(TensorFlow's LazyAdam): this equals dense AdamW whenever every step sees
every task, and otherwise differs only in the momentum that dense AdamW
keeps applying to absent rows. Bias correction uses the global step.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mhr_jax.param_tree import is_routing_path
from mhr_jax.training.state import FlatParams


def batch_rows(task_ids: jax.Array, n_tasks: int) -> tuple[jax.Array, jax.Array]:
  """The distinct task ids of a batch as rows of a sub-table.

  task_ids [b] int in [0, n_tasks) -> (rows [b], local_ids [b]): rows is
  the sorted ids with every repeat replaced by n_tasks (out of range: gathers
  give NaN rows, scatters drop them), so each distinct id appears once; local_ids[i]
  is the position of task_ids[i] in rows, so Z[rows][local_ids] == Z[task_ids].
  """
  ids = task_ids.astype(jnp.int32)
  ordered = jnp.sort(ids)
  first = jnp.concatenate([jnp.ones((1,), bool), ordered[1:] != ordered[:-1]])
  rows = jnp.where(first, ordered, n_tasks)
  local_ids = jnp.searchsorted(ordered, ids, side="left").astype(jnp.int32)
  return rows, local_ids


def gather_rows(table: jax.Array, rows: jax.Array) -> jax.Array:
  """table [T, ...], rows [b] -> [b, ...]; rows outside [0, T) (padding, bad ids) are NaN.

  Padding rows are never looked up by the model and never written back; a
  bad task id's row poisons its loss, as the dense gather does.
  """
  rows = jnp.where(rows < 0, table.shape[0], rows)  # take() counts negatives from the end
  return jnp.take(table, rows, axis=0, mode="fill", fill_value=jnp.nan)


@struct.dataclass
class RowAdamState:
  """Adam moments of each routing table, {path: [T, h, s]} float32."""

  mu: FlatParams
  nu: FlatParams


@struct.dataclass
class SparseRoutingState:
  """Optimizer state: optax state of the dense (non-routing) parameters + routing moments."""

  dense: optax.OptState
  routing: RowAdamState


class SparseRoutingOptimizer(struct.PyTreeNode):
  """Dense optax transformation for adapters; row-wise AdamW for `routing_logits`.

  `dense` must not clip: the train step clips the gradients of both halves
  by their joint global norm (`clip_grad_norm`, None for no clipping).
  """

  dense: optax.GradientTransformation = struct.field(pytree_node=False)
  routing_learning_rate: Callable[[jax.Array], jax.Array] = struct.field(pytree_node=False)
  b1: float = struct.field(pytree_node=False, default=0.9)
  b2: float = struct.field(pytree_node=False, default=0.999)
  eps: float = struct.field(pytree_node=False, default=1e-8)
  weight_decay: float = struct.field(pytree_node=False, default=0.0)
  clip_grad_norm: float | None = struct.field(pytree_node=False, default=None)

  def init(self, trainable: Mapping[str, jax.Array]) -> SparseRoutingState:
    dense, routing = split_routing(trainable)
    zeros = lambda: {k: jnp.zeros(v.shape, jnp.float32) for k, v in routing.items()}
    return SparseRoutingState(self.dense.init(dense), RowAdamState(zeros(), zeros()))


def split_routing(flat: Mapping[str, jax.Array]) -> tuple[FlatParams, FlatParams]:
  """{path: x} -> (non-routing part, routing-logit part)."""
  dense = {k: v for k, v in flat.items() if not is_routing_path(k)}
  routing = {k: v for k, v in flat.items() if is_routing_path(k)}
  return dense, routing


def clip_by_joint_norm(grads: tuple, max_norm: float | None) -> tuple[tuple, jax.Array]:
  """optax.clip_by_global_norm over a whole tree of gradients; returns (grads, norm)."""
  norm = optax.tree.norm(grads)
  if max_norm is None:
    return grads, norm
  clip = optax.clip_by_global_norm(max_norm)
  clipped, _ = clip.update(grads, clip.init(grads))
  return clipped, norm


def row_adamw(opt: SparseRoutingOptimizer, step: jax.Array, params: FlatParams,
              moments: RowAdamState, row_grads: FlatParams, rows: jax.Array
              ) -> tuple[FlatParams, RowAdamState]:
  """AdamW on the rows `rows` of every routing table, others untouched.

  params/moments: {path: [T, h, s]}; row_grads: {path: [b, h, s]}, the
  gradient w.r.t. table[rows]; step: the global step (0-based) before this
  update. Rows equal to T (padding) are dropped.
  """
  # optax's Adam on the gathered rows; its count (incremented before bias
  # correction) is the global step, so absent rows need no count of their own.
  adam = optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps)
  rows_state = optax.ScaleByAdamState(
      count=step.astype(jnp.int32),
      mu={k: gather_rows(moments.mu[k], rows) for k in row_grads},
      nu={k: gather_rows(moments.nu[k], rows) for k in row_grads})
  grads = {k: g.astype(jnp.float32) for k, g in row_grads.items()}
  adam_updates, rows_state = adam.update(grads, rows_state)
  lr = opt.routing_learning_rate(step)
  new_params, mu, nu = {}, {}, {}
  for k, u in adam_updates.items():
    p = gather_rows(params[k], rows)
    new_rows = (p - lr * (u + opt.weight_decay * p)).astype(params[k].dtype)
    new_params[k] = params[k].at[rows].set(new_rows, mode="drop")
    mu[k] = moments.mu[k].at[rows].set(rows_state.mu[k], mode="drop")
    nu[k] = moments.nu[k].at[rows].set(rows_state.nu[k], mode="drop")
  return new_params, RowAdamState(mu, nu)
