"""A projection whose kernel may carry an adapter, selected by its path."""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mhr_jax.adapters.inputs import AdapterInputs
from mhr_jax.adapters.layers import build_adapter
from mhr_jax.param_tree import Role, declare_roles


def kernel_init(scale: float = 1.0):
  return nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")


# 'kernel' is also the leaf of T5's untied `logits_dense` (an nn.Dense): backbone too.
@declare_roles(kernel=Role.BACKBONE)
class AdaptedDense(nn.Module):
  """y = x @ kernel (+ adapter), no bias (T5 has none).

  The adapter (if `adapter` targets this module's path) lives in a child
  module named `adapter`, so its parameters sit next to `kernel`, e.g.
  `encoder/layers_0/attention/query/adapter/skill_lora_a`. The adapter is
  called as `layer(x, y, adapter_inputs, kernel=kernel) -> y'` with
  y = x @ kernel (see `mhr_jax.adapters.layers.build_adapter`).

  Attributes:
    features: output width.
    kernel_axes: logical names of the [in, out] kernel axes.
    adapter: an `AdapterConfig` (or None for no adapters anywhere).
  """

  features: int
  kernel_axes: tuple[str, str]
  adapter: Optional[Any] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, adapter_inputs: Optional[AdapterInputs]) -> jax.Array:
    """x: [batch, length, in] -> [batch, length, features]."""
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(kernel_init(), self.kernel_axes),
        (x.shape[-1], self.features), self.param_dtype)
    x = x.astype(self.dtype)
    kernel = kernel.astype(self.dtype)
    y = jnp.einsum("...i,io->...o", x, kernel)
    if self.adapter is not None and self.adapter.targets(self.path_name()):
      layer = build_adapter(self.adapter, in_features=x.shape[-1],
                            out_features=self.features,
                            kernel_axes=self.kernel_axes, dtype=self.dtype,
                            # Trainable: the adapter's own dtype, not the backbone's.
                            param_dtype=jnp.dtype(self.adapter.param_dtype), name="adapter")
      # The kernel is passed for adapters that rescale the input ((IA)^3 on wo).
      y = layer(x, y, adapter_inputs, kernel=kernel)
    return y

  def path_name(self) -> str:
    """This module's parameter path, '/'-joined (e.g. 'encoder/layers_0/attention/query')."""
    return "/".join(str(p) for p in self.path)
