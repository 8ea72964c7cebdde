"""(IA)^3 (Liu et al. 2022, T-Few): a learned vector rescales a projection.

  output targets (k, v, ...):   y' = (x W) ⊙ l,   l ∈ R^{out}
  feedforward targets (wo):     y' = (x ⊙ l) W,   l ∈ R^{in}

l starts at ones (the base model). Which targets are feedforward is
`AdapterConfig.ia3_feedforward` (PEFT's `feedforward_modules`; T5's default
targets k, v, wo with wo feedforward). Parameter: `ia3_scale`.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mhr_jax.adapters.inputs import AdapterInputs, ProjectionAdapter
from mhr_jax.param_tree import Role, declare_roles


@declare_roles(ia3_scale=Role.IA3)
class IA3Adapter(ProjectionAdapter):
  """Called as layer(x, y, inputs, kernel) -> y'; the kernel is needed by feedforward targets."""

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array, inputs: Optional[AdapterInputs],
               kernel: Optional[jax.Array] = None) -> jax.Array:
    """x [b, l, in], y = x @ kernel [b, l, out] -> [b, l, out]."""
    del inputs
    # This module is `<projection>/adapter`; the projection's path decides the mode.
    projection = "/".join(str(p) for p in self.path[:-1])
    if self.config.is_ia3_feedforward(projection):
      if kernel is None:
        raise ValueError(f"{projection}: a feedforward (IA)^3 target needs the kernel")
      scale = self.param("ia3_scale", nn.with_logical_partitioning(
          nn.initializers.ones, (self.kernel_axes[0],)), (self.in_features,), self.param_dtype)
      # y is unused here: under jit its matmul is dead code and removed.
      scaled = (x.astype(scale.dtype) * scale).astype(x.dtype)
      return jnp.einsum("...i,io->...o", scaled, kernel.astype(x.dtype))
    scale = self.param("ia3_scale", nn.with_logical_partitioning(
        nn.initializers.ones, (self.kernel_axes[1],)), (self.out_features,), self.param_dtype)
    return (y.astype(scale.dtype) * scale).astype(y.dtype)
