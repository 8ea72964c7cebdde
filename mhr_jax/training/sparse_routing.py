"""Lazy (row-sparse) AdamW for the routing logits: a step costs O(batch), not O(n_tasks).

A batch touches only the rows of Z ∈ R^{|T| x h x |Φ|} of the tasks in it,
but a dense optimizer reads and writes all |T| rows of Z and of both Adam
moments on every step; with 10,000 tasks that is the bulk of the step. With
`OptimizerConfig.sparse_routing` the one train step (step.py) instead

  1. cuts every routing table to the batch's distinct rows Z[rows]
     ([b, h, |Φ|], `routing_view`) and runs the model on that sub-table with
     the task ids renumbered into it,
  2. differentiates w.r.t. the sub-table (its gradient is the dense
     gradient's non-zero rows, so the global-norm clip is unchanged),
  3. hands those row gradients and `rows` to the optimizer, where
     `row_sparse_adamw` (an optax `GradientTransformationExtraArgs`, chosen by
     `make_optimizer`) updates the rows' Adam moments in place and returns
     row updates [b, h, |Φ|],
  4. adds the row updates into the tables (`apply_updates`; the state is
     donated, so the scatter does not copy).

Why the gather is in the step and not inside the transform: the model itself
must run on the sub-table, or the forward and backward passes would still
touch all |T| rows. `routing_view` and `apply_updates` are the only two
places that know a routing table may be seen through its rows; with dense
routing they are the identity and `optax.apply_updates`.

Rows of tasks absent from a batch keep their parameters and moments
(TensorFlow's LazyAdam): this equals dense AdamW whenever every step sees
every task, and otherwise differs only in the momentum that dense AdamW
keeps applying to absent rows. Bias correction uses the transform's own
step count, which advances once per train step.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mhr_jax.adapters.routing import gather_routing_logits as gather_rows
from mhr_jax.param_tree import is_routing_path
from mhr_jax.training.state import FlatParams


def batch_rows(task_ids: jax.Array, n_tasks: int) -> tuple[jax.Array, jax.Array]:
  """The distinct task ids of a batch as rows of a sub-table.

  task_ids [b] int in [0, n_tasks) -> (rows [b], local_ids [b]): rows is
  the sorted ids with every repeat replaced by n_tasks (out of range: gathers
  give NaN rows, scatters drop them), so each distinct id appears once; local_ids[i]
  is the position of task_ids[i] in rows, so Z[rows][local_ids] == Z[task_ids].
  A bad id (negative or >= n_tasks) lands on a NaN row and poisons its loss,
  as the dense gather does.
  """
  ids = task_ids.astype(jnp.int32)
  ordered = jnp.sort(ids)
  first = jnp.concatenate([jnp.ones((1,), bool), ordered[1:] != ordered[:-1]])
  rows = jnp.where(first, ordered, n_tasks)
  local_ids = jnp.searchsorted(ordered, ids, side="left").astype(jnp.int32)
  return rows, local_ids


def routing_view(trainable: Mapping[str, jax.Array], batch: Mapping[str, jax.Array]
                 ) -> tuple[FlatParams, jax.Array, dict]:
  """(view, rows, batch): the parameters the model runs on for a row-sparse step.

  Every routing table [T, h, s] of `trainable` becomes its rows `rows` [b, h, s]
  (`batch_rows`), and the batch's task ids are renumbered into those rows;
  other parameters pass through. Without routing tables, rows is empty.
  """
  routing = {k: v for k, v in trainable.items() if is_routing_path(k)}
  if not routing:
    return dict(trainable), jnp.zeros((0,), jnp.int32), dict(batch)
  n_tasks = {v.shape[0] for v in routing.values()}
  if len(n_tasks) > 1:
    raise ValueError(f"routing tables disagree on n_tasks: {sorted(n_tasks)}")
  rows, local_ids = batch_rows(batch["task_ids"], n_tasks.pop())
  view = {**trainable, **{k: gather_rows(v, rows) for k, v in routing.items()}}
  return view, rows, {**batch, "task_ids": local_ids}


def apply_updates(params: Mapping[str, jax.Array], updates: Mapping[str, jax.Array],
                  rows: Optional[jax.Array]) -> FlatParams:
  """params + updates; with `rows`, each routing table's update is its rows [b, ...].

  Rows equal to the table size (padding of `batch_rows`) are dropped.
  """
  if rows is None:
    return optax.apply_updates(dict(params), dict(updates))
  dense = optax.apply_updates({k: p for k, p in params.items() if not is_routing_path(k)},
                              {k: u for k, u in updates.items() if not is_routing_path(k)})
  return {**dense, **{k: p.at[rows].add(updates[k].astype(p.dtype), mode="drop")
                      for k, p in params.items() if is_routing_path(k)}}


class RowAdamState(NamedTuple):
  """Adam moments of each routing table, {path: [T, h, s]} float32, and the step count."""

  count: jax.Array
  mu: Any
  nu: Any


def row_sparse_adamw(learning_rate: Callable[[jax.Array], jax.Array], b1: float = 0.9,
                     b2: float = 0.999, eps: float = 1e-8, weight_decay: float = 0.0
                     ) -> optax.GradientTransformationExtraArgs:
  """AdamW on the rows `rows` of full tables, every other row untouched.

  init(params): params are the full tables {path: [T, ...]}.
  update(row_grads, state, row_params, rows=rows): row_grads and row_params
  are {path: [b, ...]}, the rows `rows` [b] of each table (from
  `routing_view`); returns the row updates -lr * (adam + weight_decay * p),
  to be added with `apply_updates`.
  """
  adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps)

  def init(params):
    zeros = lambda p: jnp.zeros(p.shape, jnp.float32)
    return RowAdamState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                        jax.tree.map(zeros, params))

  def update(row_grads, state, params=None, *, rows=None, **unused_extra_args):
    if rows is None or params is None:
      raise ValueError("row_sparse_adamw.update needs the row parameters and rows=; "
                       "use it through training.step.make_train_step")
    # optax's Adam on the gathered rows; the count is shared by all rows, so
    # a row absent for a while is bias-corrected by the global step.
    rows_state = optax.ScaleByAdamState(
        count=state.count, mu=jax.tree.map(lambda m: gather_rows(m, rows), state.mu),
        nu=jax.tree.map(lambda v: gather_rows(v, rows), state.nu))
    adam_updates, rows_state = adam.update(
        jax.tree.map(lambda g: g.astype(jnp.float32), row_grads), rows_state)
    lr = learning_rate(state.count)
    updates = jax.tree.map(lambda u, p: (-lr * (u + weight_decay * p)).astype(p.dtype),
                           adam_updates, params)
    scatter = lambda table, r: table.at[rows].set(r, mode="drop")
    return updates, RowAdamState(rows_state.count,
                                 jax.tree.map(scatter, state.mu, rows_state.mu),
                                 jax.tree.map(scatter, state.nu, rows_state.nu))

  return optax.GradientTransformationExtraArgs(init, update)
