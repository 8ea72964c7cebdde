"""Sequence losses over decoder targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_log_likelihoods(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """log p(target_t) per position: logits [b, t, v], targets [b, t] -> [b, t] float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def weighted_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                           label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Mean token cross-entropy over positions with weight > 0, optionally label-smoothed.

  With smoothing eps (fairseq's `label_smoothed_nll_loss`, which mttl trains
  with at eps = 0.1) each token's loss is

    (1 - eps) * -log p(target) + (eps / v) * sum_v -log p(v),

  the cross-entropy against (1 - eps) one-hot + eps uniform, up to a constant.

  Args:
    logits: [b, t, v]; targets: [b, t] int; weights: [b, t] (0 on padding).
    label_smoothing: eps in [0, 1).
  Returns:
    (loss, number of weighted tokens), both scalars.
  """
  weights = weights.astype(jnp.float32)
  if label_smoothing:
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_logp = jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    per_token = ((1.0 - label_smoothing) * -target_logp
                 + (label_smoothing / logits.shape[-1]) * -logp.sum(-1))
    denom = jnp.maximum(weights.sum(), 1.0)
    return (per_token * weights).sum() / denom, weights.sum()
  nll = -token_log_likelihoods(logits, targets) * weights
  denom = jnp.maximum(weights.sum(), 1.0)
  return nll.sum() / denom, weights.sum()


def sequence_log_likelihood(logits: jax.Array, targets: jax.Array,
                            weights: jax.Array) -> jax.Array:
  """Sum of target log-likelihoods per example ([b]); rank classification scores."""
  return (token_log_likelihoods(logits, targets) * weights.astype(jnp.float32)).sum(-1)


# --- Multiple-choice losses of T0 few-shot fine-tuning (T-Few's, as microsoft/mttl) ----------
# Shapes: b examples, C answer choices each, t target positions, v vocabulary.
# `choice_weights` [b, C, t] is 1 on a choice's real tokens (EOS included), 0 on padding.


def choice_log_likelihoods(token_ll: jax.Array, choice_weights: jax.Array, *,
                           length_normalize: bool) -> jax.Array:
  """Per-choice log-likelihood [b, C]: the sum over its tokens, or the mean (length_normalize).

  token_ll [b, C, t] (log p of each target token), choice_weights [b, C, t].
  The mean divides by the number of non-pad tokens, EOS included (mttl's
  `length_norm: 1`); a choice without tokens scores 0.
  """
  weights = choice_weights.astype(jnp.float32)
  total = (token_ll * weights).sum(-1)
  if not length_normalize:
    return total
  return total / jnp.maximum(weights.sum(-1), 1.0)


def multiple_choice_loss(choice_scores: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean over examples of -log softmax(choice_scores)[label]: scores [b, C], labels [b] int.

  With length-normalised log-likelihoods as scores this is T-Few's / mttl's
  `mc_loss` (cross-entropy of the softmax over the choices' mean token log-likelihoods).
  """
  logp = jax.nn.log_softmax(choice_scores.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1)[:, 0].mean()


UNLIKELIHOOD_EPS = 1e-2  # mttl: -log(1 - p + 1e-2), bounded where p -> 1


def unlikelihood_loss(token_ll: jax.Array, choice_weights: jax.Array,
                      labels: jax.Array) -> jax.Array:
  """Mean over the wrong choices' tokens of -log(1 - p_token + 0.01) (T-Few's `unlikely_loss`).

  token_ll [b, C, t], choice_weights [b, C, t], labels [b]. mttl's sum also
  carries a constant -log(1.01) for each masked position (no gradient); it is
  left out here, so the value differs by that constant and the gradient is equal.
  """
  wrong = 1.0 - jax.nn.one_hot(labels, token_ll.shape[1], dtype=jnp.float32)  # [b, C]
  weights = choice_weights.astype(jnp.float32) * wrong[:, :, None]
  per_token = -jnp.log(1.0 - jnp.exp(token_ll) + UNLIKELIHOOD_EPS)
  return (per_token * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def correct_choice_cross_entropy(token_ll: jax.Array, choice_weights: jax.Array,
                                 labels: jax.Array) -> tuple[jax.Array, jax.Array]:
  """LM loss on the correct choices: mean token NLL over them (and their token count)."""
  onehot = jax.nn.one_hot(labels, token_ll.shape[1], dtype=jnp.float32)  # [b, C]
  weights = choice_weights.astype(jnp.float32) * onehot[:, :, None]
  return -(token_ll * weights).sum() / jnp.maximum(weights.sum(), 1.0), weights.sum()
