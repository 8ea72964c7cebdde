"""The train step: one for every stage and method."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax.linen as nn
import gin
import jax
import optax

from mhr_jax.partitioning import Partitioner
from mhr_jax.training import sparse_routing
from mhr_jax.training.losses import weighted_cross_entropy
from mhr_jax.training.optimizer import Optimizer
from mhr_jax.training.state import TrainState, merge_params

Batch = Mapping[str, jax.Array]


def model_logits(model: nn.Module, params: Mapping[str, Any], batch: Batch, *,
                 deterministic: bool, single_task: bool,
                 rng: Optional[jax.Array] = None) -> jax.Array:
  """Teacher-forced logits [b, t, v] for a converted batch."""
  return model.apply({"params": params}, batch["encoder_input_tokens"],
                     batch["decoder_input_tokens"], task_ids=batch.get("task_ids"),
                     deterministic=deterministic, single_task=single_task,
                     rngs=training_rngs(deterministic, rng))


def training_rngs(deterministic: bool, rng: Optional[jax.Array]) -> Optional[dict]:
  """The model's rng streams: None in eval mode, else 'dropout' and 'routing' from `rng`."""
  if deterministic:
    return None
  dropout_rng, routing_rng = jax.random.split(rng)
  return {"dropout": dropout_rng, "routing": routing_rng}


@gin.configurable(module="mhr_jax", allowlist=["label_smoothing"])
def make_train_step(model: nn.Module, optimizer: Optimizer, *, single_task: bool = False,
                    batch_loss: Optional[Callable] = None, label_smoothing: float = 0.0):
  """Returns step(state, batch) -> (state, metrics); differentiates only `state.trainable`.

  The one train step of every stage and method. With
  `optimizer.sparse_routing` the model runs on the batch's rows of each
  routing table and the optimizer updates those rows only (sparse_routing.py);
  otherwise `routing_view` is skipped and every row is updated.
  metrics: loss (mean token cross-entropy), tokens (weighted target tokens),
  grad_norm (global norm before clipping), learning_rate.
  `batch_loss(model, params, batch, rng=, single_task=) -> (loss, tokens)`
  replaces the token cross-entropy (e.g. `multiple_choice.MultipleChoiceLoss`).
  label_smoothing: eps of the token cross-entropy (`losses.weighted_cross_entropy`).
  """
  if optimizer.sparse_routing and batch_loss is not None:
    raise ValueError("sparse_routing=True trains with the LM loss only; unset batch_loss")

  def loss_fn(view, frozen, batch, rng):
    if batch_loss is not None:
      return batch_loss(model, merge_params(view, frozen), batch, rng=rng,
                        single_task=single_task)
    logits = model_logits(model, merge_params(view, frozen), batch, deterministic=False,
                          single_task=single_task, rng=rng)
    return weighted_cross_entropy(logits, batch["decoder_target_tokens"],
                                  batch["decoder_loss_weights"], label_smoothing)

  def step(state: TrainState, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step)
    view, rows = state.trainable, None
    if optimizer.sparse_routing:
      view, rows, batch = sparse_routing.routing_view(state.trainable, batch)
    (loss, tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        view, state.frozen, batch, rng)
    updates, opt_state = optimizer.tx.update(grads, state.opt_state, view, rows=rows)
    trainable = sparse_routing.apply_updates(state.trainable, updates, rows)
    metrics = {"loss": loss, "tokens": tokens, "grad_norm": optax.tree.norm(grads),
               "learning_rate": optimizer.learning_rate(state.step)}
    return state.replace(step=state.step + 1, trainable=trainable, opt_state=opt_state), metrics

  return step


class JittedTrainStep:
  """A train step jitted with explicit shardings; donates all of the state but `frozen`.

  The step counter, trainable parameters, optimizer state and rng are
  updated in place; the frozen backbone (the bulk of a PEFT model's memory)
  is only read, so callers may keep using it (e.g. the multi-task backbone
  shared by every held-out task and seed) without copying it first. Inputs
  and outputs have the shardings of `state_shardings`, so the state comes back
  in the layout it went in and the second call does not recompile.

  Attributes:
    jitted: the `jax.jit` object of f((step, trainable, opt_state, rng), frozen, batch);
      `lower(state, batch)` lowers it from arrays or ShapeDtypeStructs.
  """

  def __init__(self, step: Callable[[TrainState, Batch], tuple[TrainState, Any]],
               partitioner: Partitioner, state_shardings: TrainState):

    def inner(mutable, frozen, batch):
      count, trainable, opt_state, rng = mutable
      new, metrics = step(TrainState(count, trainable, frozen, opt_state, rng), batch)
      return (new.step, new.trainable, new.opt_state, new.rng), metrics

    mutable = self._split(state_shardings)[0]
    self.jitted = partitioner.jit(
        inner, in_shardings=(mutable, state_shardings.frozen, partitioner.batch_sharding()),
        out_shardings=(mutable, partitioner.replicated()), donate_argnums=(0,))

  @staticmethod
  def _split(state: TrainState) -> tuple[tuple, Any]:
    return (state.step, state.trainable, state.opt_state, state.rng), state.frozen

  def __call__(self, state: TrainState, batch: Batch) -> tuple[TrainState, Any]:
    (count, trainable, opt_state, rng), metrics = self.jitted(*self._split(state), batch)
    return state.replace(step=count, trainable=trainable, opt_state=opt_state, rng=rng), metrics

  def lower(self, state: TrainState, batch: Batch) -> jax.stages.Lowered:
    """Lowers the step for `state` and `batch` (arrays or ShapeDtypeStructs)."""
    return self.jitted.lower(*self._split(state), batch)

