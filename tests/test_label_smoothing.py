"""Label-smoothed LM loss == torch's cross_entropy(label_smoothing=eps) (= fairseq's, used by mttl)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mhr_jax.training.losses import weighted_cross_entropy


@pytest.mark.parametrize("eps", [0.0, 0.1])
def test_label_smoothed_loss_matches_torch(eps):
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (3, 5, 11)).astype(np.float32)
  targets = logits.argmax(-1)  # confident: smoothing raises the loss
  weights = (rng.random((3, 5)) > 0.3).astype(np.float32)
  loss, tokens = weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                        jnp.asarray(weights), label_smoothing=eps)
  per_token = torch.nn.functional.cross_entropy(
      torch.from_numpy(logits).reshape(-1, 11), torch.from_numpy(targets).reshape(-1),
      reduction="none", label_smoothing=eps).numpy()
  expected = (per_token * weights.reshape(-1)).sum() / weights.sum()
  assert float(tokens) == weights.sum()
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  if eps:  # smoothing changes the loss
    plain, _ = weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(targets),
                                      jnp.asarray(weights))
    assert abs(float(plain) - float(loss)) > 1e-2
