"""Jitted train and scoring steps (the edges where jit happens)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from mhr_jax.training import sparse_routing
from mhr_jax.training.losses import sequence_log_likelihood, weighted_cross_entropy
from mhr_jax.training.state import TrainState, merge_params

Batch = Mapping[str, jax.Array]


def model_logits(model: nn.Module, params: Mapping[str, Any], batch: Batch, *,
                 deterministic: bool, single_task: bool,
                 rng: Optional[jax.Array] = None) -> jax.Array:
  """Teacher-forced logits [b, t, v] for a converted batch."""
  rngs = None
  if not deterministic:
    dropout_rng, routing_rng = jax.random.split(rng)
    rngs = {"dropout": dropout_rng, "routing": routing_rng}
  return model.apply({"params": params}, batch["encoder_input_tokens"],
                     batch["decoder_input_tokens"], task_ids=batch.get("task_ids"),
                     deterministic=deterministic, single_task=single_task, rngs=rngs)


@gin.configurable(module="mhr_jax", allowlist=["label_smoothing"])
def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, *,
                    single_task: bool = False,
                    learning_rate_fn: Optional[Callable[[jax.Array], jax.Array]] = None,
                    label_smoothing: float = 0.0):
  """Returns step(state, batch) -> (state, metrics); differentiates only `state.trainable`.

  label_smoothing: eps of the training loss (`losses.weighted_cross_entropy`).

  With a `SparseRoutingOptimizer` the routing logits are updated row-sparsely
  (see sparse_routing.py); with an optax transformation, densely.
  """
  if isinstance(optimizer, sparse_routing.SparseRoutingOptimizer):
    return _make_sparse_routing_step(model, optimizer, single_task, learning_rate_fn,
                                     label_smoothing)

  def loss_fn(trainable, frozen, batch, rng):
    logits = model_logits(model, merge_params(trainable, frozen), batch, deterministic=False,
                          single_task=single_task, rng=rng)
    return weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                  batch["decoder_loss_weights"], label_smoothing)

  def step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step)
    (loss, tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.trainable, state.frozen, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.trainable)
    trainable = optax.apply_updates(state.trainable, updates)
    metrics = {"loss": loss, "tokens": tokens, "grad_norm": optax.tree.norm(grads)}
    if learning_rate_fn is not None:
      metrics["learning_rate"] = learning_rate_fn(state.step)
    return state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state), metrics

  return step


def _make_sparse_routing_step(model, optimizer, single_task, learning_rate_fn,
                              label_smoothing=0.0):
  """The train step of `SparseRoutingOptimizer`: the model sees only the batch's routing rows."""

  def loss_fn(dense, routing_rows, frozen, batch, rng):
    logits = model_logits(model, merge_params({**dense, **routing_rows}, frozen), batch,
                          deterministic=False, single_task=single_task, rng=rng)
    return weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                  batch["decoder_loss_weights"], label_smoothing)

  def step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step)
    dense, routing = sparse_routing.split_routing(state.trainable)
    n_tasks = {v.shape[0] for v in routing.values()}
    if len(n_tasks) > 1:
      raise ValueError(f"routing tables disagree on n_tasks: {sorted(n_tasks)}")
    if routing:
      rows, local_ids = sparse_routing.batch_rows(batch["task_ids"], n_tasks.pop())
      batch = {**batch, "task_ids": local_ids}
    else:
      rows = jnp.zeros((0,), jnp.int32)
    routing_rows = {k: sparse_routing.gather_rows(v, rows) for k, v in routing.items()}
    (loss, tokens), (dense_grads, row_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(dense, routing_rows, state.frozen, batch, rng)
    (dense_grads, row_grads), grad_norm = sparse_routing.clip_by_joint_norm(
        (dense_grads, row_grads), optimizer.clip_grad_norm)
    updates, dense_state = optimizer.dense.update(dense_grads, state.opt_state.dense, dense)
    dense = optax.apply_updates(dense, updates)
    routing, moments = sparse_routing.row_adamw(optimizer, state.step, routing,
                                                state.opt_state.routing, row_grads, rows)
    opt_state = sparse_routing.SparseRoutingState(dense_state, moments)
    metrics = {"loss": loss, "tokens": tokens, "grad_norm": grad_norm}
    if learning_rate_fn is not None:
      metrics["learning_rate"] = learning_rate_fn(state.step)
    return state.replace(step=state.step + 1, trainable={**dense, **routing},
                         opt_state=opt_state), metrics

  return step


def jit_train_step(step: Callable[[TrainState, Batch], tuple[TrainState, Any]]
                   ) -> Callable[[TrainState, Batch], tuple[TrainState, Any]]:
  """`jax.jit(step)` that donates every buffer of the state except the frozen parameters.

  The step counter, trainable parameters, optimizer state and rng are
  updated in place; the frozen backbone (the bulk of a PEFT model's memory)
  is only read, so callers may keep using it (e.g. the multi-task backbone
  shared by every held-out task and seed) without copying it first.
  """

  def inner(mutable, frozen, batch):
    count, trainable, opt_state, rng = mutable
    new, metrics = step(TrainState(count, trainable, frozen, opt_state, rng), batch)
    return (new.step, new.trainable, new.opt_state, new.rng), metrics

  jitted = jax.jit(inner, donate_argnums=(0,))

  def call(state: TrainState, batch: Batch):
    (count, trainable, opt_state, rng), metrics = jitted(
        (state.step, state.trainable, state.opt_state, state.rng), state.frozen, batch)
    return state.replace(step=count, trainable=trainable, opt_state=opt_state, rng=rng), metrics

  return call


def make_eval_loss_step(model: nn.Module, *, single_task: bool = False):
  """Returns f(params, batch) -> (summed token NLL, token count) in eval mode."""

  def f(params, batch):
    logits = model_logits(model, params, batch, deterministic=True, single_task=single_task)
    loss, tokens = weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                          batch["decoder_loss_weights"])
    return loss * tokens, tokens

  return f


def make_score_step(model: nn.Module, *, single_task: bool = False):
  """Returns f(params, batch) -> [b] sum of target log-likelihoods (rank classification)."""

  def f(params, batch):
    logits = model_logits(model, params, batch, deterministic=True, single_task=single_task)
    return sequence_log_likelihood(logits, batch["decoder_target_tokens"],
                                   batch["decoder_loss_weights"])

  return f
