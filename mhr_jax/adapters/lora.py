"""LoRA (Hu et al. 2022): a low-rank update next to a frozen kernel.

  y' = y + dropout(x) A B · scaling,   A ∈ R^{in x r}, B ∈ R^{r x out}

A starts like PEFT's (torch's default `nn.Linear` init: kaiming-uniform with
a = √5, i.e. U(-1/√in, 1/√in)), B at zero, so training starts from the base
model. `scaling` defaults to 1/r (PEFT's Poly, microsoft/mttl).
Parameters: `lora_a` (kernel input axis, 'lora_rank'), `lora_b`
('lora_rank', kernel output axis).
"""

from __future__ import annotations

import math
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mhr_jax.adapters.inputs import AdapterInputs, ProjectionAdapter
from mhr_jax.param_tree import Role, declare_roles


def kaiming_uniform_init(fan_in: int):
  """U(-1/√fan_in, 1/√fan_in): torch's kaiming_uniform_(a=√5) for a [*, fan_in] weight."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def lora_delta(x: jax.Array, a: jax.Array, b: jax.Array, scaling: float) -> jax.Array:
  """x [..., in], A [in, r], B [r, out] -> (x A) B · scaling [..., out]."""
  return (x @ a) @ b * scaling


def input_dropout(x: jax.Array, rate: float, inputs: Optional[AdapterInputs]) -> jax.Array:
  """Dropout on the adapter input (training only; rng stream 'dropout')."""
  deterministic = inputs is None or inputs.deterministic
  if rate == 0.0 or deterministic:
    return x
  return nn.Dropout(rate)(x, deterministic=False)


@declare_roles(lora_a=Role.LORA, lora_b=Role.LORA)
class LoraAdapter(ProjectionAdapter):
  """One LoRA on a projection [in, out]; called as layer(x, y, inputs) -> y'."""

  @nn.compact
  def __call__(self, x: jax.Array, y: jax.Array, inputs: Optional[AdapterInputs],
               kernel: Optional[jax.Array] = None) -> jax.Array:
    """x [b, l, in], y = x @ kernel [b, l, out] -> y + ΔW x [b, l, out]."""
    del kernel
    cfg = self.config
    a = self.param("lora_a", nn.with_logical_partitioning(
        kaiming_uniform_init(self.in_features), (self.kernel_axes[0], "lora_rank")),
                   (self.in_features, cfg.rank), self.param_dtype)
    b = self.param("lora_b", nn.with_logical_partitioning(
        nn.initializers.zeros, ("lora_rank", self.kernel_axes[1])),
                   (cfg.rank, self.out_features), self.param_dtype)
    h = input_dropout(x, cfg.dropout, inputs).astype(a.dtype)
    return y + lora_delta(h, a, b, cfg.scale).astype(y.dtype)
