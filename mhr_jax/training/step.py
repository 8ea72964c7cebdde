"""Jitted train and scoring steps (the edges where jit happens)."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

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


def make_train_step(model: nn.Module, optimizer: optax.GradientTransformation, *,
                    single_task: bool = False,
                    learning_rate_fn: Optional[Callable[[jax.Array], jax.Array]] = None):
  """Returns step(state, batch) -> (state, metrics); differentiates only `state.trainable`."""

  def loss_fn(trainable, frozen, batch, rng):
    logits = model_logits(model, merge_params(trainable, frozen), batch, deterministic=False,
                          single_task=single_task, rng=rng)
    return weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                  batch["decoder_loss_weights"])

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
