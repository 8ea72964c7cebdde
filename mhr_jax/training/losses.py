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
