"""Multiple choice, model side: encode each input once, score all its answer choices.

A choice batch holds, for b examples with C answer choices each:
  encoder_input_tokens [b, i] int32   the (prompted) inputs
  choice_tokens        [b, C, t] int32 each choice's tokens + EOS, 0-padded
  labels               [b] int32       index of the correct choice
  task_ids             [b] int32
(`mhr_jax.evaluation.batching.make_choice_batch` builds one.) The encoder runs
once per example; its output is repeated for the C choices, which the
decoder scores teacher-forced (mttl's `T0EncoderDecoder.predict` and its
training step with `mc_loss` / `unlikely_loss`).

`MultipleChoiceLoss` is T-Few's few-shot objective as microsoft/mttl trains the
T0 held-out tasks (configs/t0/<task>.json: length_norm 1, mc_loss 1,
unlikely_loss 1):
  loss = LM(correct choice) + mc_loss · MC + unlikelihood_loss · UL
with the pure functions of `losses.py`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from mhr_jax.training import losses
from mhr_jax.training.step import training_rngs

Batch = Mapping[str, jax.Array]


def _shift_right(tokens: jax.Array) -> jax.Array:
  """Decoder inputs: the targets shifted right on the last axis, 0 as the start token."""
  return jnp.concatenate([jnp.zeros_like(tokens[..., :1]), tokens[..., :-1]], axis=-1)


def _encode_once_decode_choices(module, encoder_input_tokens, choice_tokens, task_ids,
                                deterministic: bool, single_task: bool):
  b, c, t = choice_tokens.shape
  ai = module.adapter_inputs(task_ids, b, deterministic, single_task)
  encoded = module.encode(encoder_input_tokens, deterministic=deterministic, adapter_inputs=ai)
  if ai is not None:  # one routing context per example, repeated for its choices
    ai = ai.replace(task_ids=jnp.repeat(ai.task_ids, c, axis=0),
                    routing_weights=None if ai.routing_weights is None
                    else jnp.repeat(ai.routing_weights, c, axis=0))
  logits = module.decode(jnp.repeat(encoded, c, axis=0),
                         jnp.repeat(encoder_input_tokens, c, axis=0),
                         _shift_right(choice_tokens).reshape(b * c, t),
                         deterministic=deterministic, adapter_inputs=ai)
  return logits.reshape(b, c, t, -1)


def choice_logits(model: nn.Module, params: Mapping[str, Any], batch: Batch, *,
                  deterministic: bool, single_task: bool,
                  rng: Optional[jax.Array] = None) -> jax.Array:
  """Teacher-forced logits [b, C, t, v] of every choice, the input encoded once."""
  rngs = training_rngs(deterministic, rng)
  task_ids = batch.get("task_ids")
  if task_ids is None:
    task_ids = jnp.zeros((batch["encoder_input_tokens"].shape[0],), jnp.int32)
  return model.apply({"params": params}, batch["encoder_input_tokens"], batch["choice_tokens"],
                     task_ids, deterministic, single_task, method=_encode_once_decode_choices,
                     rngs=rngs)


def choice_token_log_likelihoods(logits: jax.Array, choice_tokens: jax.Array) -> jax.Array:
  """[b, C, t, v], [b, C, t] -> log p of each choice token [b, C, t] (float32)."""
  return losses.token_log_likelihoods(logits, choice_tokens)


def make_choice_score_step(model: nn.Module, *, single_task: bool = False,
                           length_normalize: bool = False):
  """Returns f(params, choice batch) -> [b, C] choice log-likelihoods (rank classification).

  Summed over each choice's tokens, or averaged over them (EOS included)
  with `length_normalize` (mttl's `length_norm: 1`); argmax = prediction.
  """

  def f(params, batch):
    logits = choice_logits(model, params, batch, deterministic=True, single_task=single_task)
    token_ll = choice_token_log_likelihoods(logits, batch["choice_tokens"])
    return losses.choice_log_likelihoods(token_ll, batch["choice_tokens"] > 0,
                                         length_normalize=length_normalize)

  return f


@gin.configurable(module="mhr_jax")
@dataclasses.dataclass(frozen=True)
class MultipleChoiceLoss:
  """Few-shot training objective of multiple-choice tasks.

  Attributes:
    mc_loss: weight of the multiple-choice loss (0: off).
    unlikelihood_loss: weight of the unlikelihood loss on the wrong choices (0: off).
    length_normalize: the MC loss's choice scores are mean (not summed)
      token log-likelihoods.
  The LM loss on the correct choice always has weight 1. With both weights 0
  the few-shot stage trains with the plain LM loss on its usual batches.
  """

  mc_loss: float = 0.0
  unlikelihood_loss: float = 0.0
  length_normalize: bool = True

  def __post_init__(self):
    for field in ("mc_loss", "unlikelihood_loss"):
      if getattr(self, field) < 0:
        raise ValueError(f"{field}={getattr(self, field)!r} must be >= 0")

  @property
  def active(self) -> bool:
    """Whether training needs choice batches (an MC or unlikelihood term is on)."""
    return self.mc_loss > 0 or self.unlikelihood_loss > 0

  def __call__(self, model: nn.Module, params, batch: Batch, *, rng: jax.Array,
               single_task: bool) -> tuple[jax.Array, jax.Array]:
    """(loss, number of correct-choice tokens) of a choice batch in training mode."""
    logits = choice_logits(model, params, batch, deterministic=False, single_task=single_task,
                           rng=rng)
    weights = batch["choice_tokens"] > 0
    token_ll = choice_token_log_likelihoods(logits, batch["choice_tokens"])
    loss, tokens = losses.correct_choice_cross_entropy(token_ll, weights, batch["labels"])
    if self.mc_loss > 0:
      scores = losses.choice_log_likelihoods(token_ll, weights,
                                             length_normalize=self.length_normalize)
      loss = loss + self.mc_loss * losses.multiple_choice_loss(scores, batch["labels"])
    if self.unlikelihood_loss > 0:
      loss = loss + self.unlikelihood_loss * losses.unlikelihood_loss(token_ll, weights,
                                                                      batch["labels"])
    return loss, tokens
