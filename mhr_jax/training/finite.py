"""Finiteness of a pytree: the check run before every checkpoint and after every restore."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


@jax.jit
def _nonfinite_flags(leaves: list) -> jax.Array:
  """[n] bool: whether each floating-point leaf holds a NaN or inf."""
  return jnp.stack([~jnp.all(jnp.isfinite(x)) for x in leaves])


def count_nonfinite(tree: Any) -> tuple[int, int]:
  """(number of floating-point arrays with a NaN/inf, number of floating-point arrays).

  Integer leaves (step counters, PRNG keys) are skipped. One small jitted
  reduction, run on the devices that hold the arrays (works for sharded ones).
  """
  leaves = [x for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  if not leaves:
    return 0, 0
  flags = np.asarray(jax.device_get(_nonfinite_flags(leaves)))
  return int(flags.sum()), len(leaves)
