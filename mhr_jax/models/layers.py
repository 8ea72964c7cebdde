"""T5 building blocks: RMS norm, relative position bias, attention, MLP.

Shapes: b = batch, q/k = query/key length, h = heads, d = d_kv,
e = d_model, f = d_ff.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mhr_jax.adapters.dense import AdaptedDense
from mhr_jax.adapters.inputs import AdapterInputs
from mhr_jax.param_tree import Role, declare_roles

# Added to masked attention logits; finite so fully masked rows stay NaN-free.
_MASK_VALUE = -1e10


@declare_roles(scale=Role.BACKBONE)
class RMSNorm(nn.Module):
  """T5 layer norm: scale only, no mean subtraction, statistics in fp32."""

  epsilon: float = 1e-6
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [..., e] -> [..., e]."""
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                       (x.shape[-1],), self.param_dtype)
    x32 = x.astype(jnp.float32)
    var = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(var + self.epsilon)
    return (scale.astype(jnp.float32) * y).astype(self.dtype)


def relative_position_bucket(relative_position: jax.Array, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
  """Maps (key_pos - query_pos) to T5's log-spaced buckets, int32 in [0, num_buckets)."""
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(jnp.int32) * num_buckets
    n = jnp.abs(relative_position)
  else:
    n = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  # Guard log(0): those positions take the `is_small` branch anyway.
  n_float = jnp.maximum(n, 1).astype(jnp.float32)
  large = max_exact + (jnp.log(n_float / max_exact) / math.log(max_distance / max_exact)
                       * (num_buckets - max_exact)).astype(jnp.int32)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, n, large)


@declare_roles(rel_embedding=Role.BACKBONE)
class RelativePositionBiases(nn.Module):
  """Learned per-head bias for each relative-position bucket (computed once per stack)."""

  num_buckets: int
  max_distance: int
  num_heads: int
  bidirectional: bool
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q_len: int, k_len: int, q_offset: jax.Array | int = 0) -> jax.Array:
    """Returns the bias [1, h, q_len, k_len]; query i sits at position i + q_offset."""
    table = self.param(
        "rel_embedding",
        nn.with_logical_partitioning(nn.initializers.normal(1.0), ("heads", "relpos_buckets")),
        (self.num_heads, self.num_buckets), self.param_dtype)
    context = jnp.arange(q_len, dtype=jnp.int32)[:, None] + q_offset
    memory = jnp.arange(k_len, dtype=jnp.int32)[None, :]
    bucket = relative_position_bucket(memory - context, self.bidirectional,
                                      self.num_buckets, self.max_distance)
    bias = jnp.take(table, bucket, axis=1)  # [h, q, k]
    return bias[None].astype(self.dtype)


class MultiHeadAttention(nn.Module):
  """T5 attention: no 1/sqrt(d) scaling, additive position bias and mask.

  Two caches (collection 'cache') serve autoregressive decoding:
  - `decode=True` (self-attention): the call that creates the cache sizes it
    for `cache_length` positions (default: that call's own length); every
    later call writes its one step's keys/values at `decode_index`.
  - `cache_kv_input=True` (cross-attention): the creating call projects
    `inputs_kv` (the encoder output) to keys/values once and stores them;
    later calls read them and ignore `inputs_kv`, so a decoding step costs
    no [i, e] x [e, h*d] projections.
  Cached keys and values are stored [b, h, d, k] (key positions last): XLA's
  CPU dot takes both attention products' cache operand in that layout, so a
  step reads the caches in place; stored [b, k, h, d], every step copied
  each layer's caches into it (the compiled greedy loop at t5-small shapes
  had 12 cross-attention copies of [8, 8, 64, 128] per step).
  """

  num_heads: int
  head_dim: int
  dropout_rate: float = 0.0
  deterministic: bool = True
  decode: bool = False
  cache_length: Optional[int] = None
  cache_kv_input: bool = False
  adapter: Optional[Any] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array,
               bias: Optional[jax.Array], adapter_inputs: Optional[AdapterInputs],
               decode_index: Optional[jax.Array] = None) -> jax.Array:
    """inputs_q: [b, q, e], inputs_kv: [b, k, e], bias: [b|1, h, q, k] -> [b, q, e]."""
    inner = self.num_heads * self.head_dim
    dense = lambda n, f, axes: AdaptedDense(f, axes, adapter=self.adapter, dtype=self.dtype,
                                            param_dtype=self.param_dtype, name=n)
    split = lambda t: t.reshape(t.shape[:2] + (self.num_heads, self.head_dim))
    q = split(dense("query", inner, ("embed", "joined_kv"))(inputs_q, adapter_inputs))
    project_kv = lambda: (  # [b, k, h, d] each
        split(dense("key", inner, ("embed", "joined_kv"))(inputs_kv, adapter_inputs)),
        split(dense("value", inner, ("embed", "joined_kv"))(inputs_kv, adapter_inputs)))

    to_cache_layout = lambda t: jnp.transpose(t, (0, 2, 3, 1))  # [b, k, h, d] -> [b, h, d, k]
    cache_layout = self.cache_kv_input or self.decode  # k, v: [b, h, d, k] below
    if self.cache_kv_input:
      if self.has_variable("cache", "projected_key"):
        k = self.get_variable("cache", "projected_key")
        v = self.get_variable("cache", "projected_value")
      else:
        k, v = map(to_cache_layout, project_kv())
        self.put_variable("cache", "projected_key", k)
        self.put_variable("cache", "projected_value", v)
    else:
      k, v = project_kv()

    if self.decode:
      k, v = to_cache_layout(k), to_cache_layout(v)
      initialized = self.has_variable("cache", "cached_key")
      shape = k.shape[:3] + (self.cache_length or k.shape[3],)
      cached_key = self.variable("cache", "cached_key", jnp.zeros, shape, k.dtype)
      cached_value = self.variable("cache", "cached_value", jnp.zeros, shape, v.dtype)
      if initialized:
        start = (0, 0, 0, decode_index)
        cached_key.value = jax.lax.dynamic_update_slice(cached_key.value, k, start)
        cached_value.value = jax.lax.dynamic_update_slice(cached_value.value, v, start)
        k, v = cached_key.value, cached_value.value

    # Beam search: the n beams of an input (consecutive query rows) share its
    # cached cross-attention keys/values; they attend as n query positions of
    # one row, so the cache is stored once per input, not per beam.
    groups = q.shape[0] // k.shape[0]
    query_rows, q_len = q.shape[0], q.shape[1]
    if groups > 1:
      q = q.reshape((k.shape[0], groups * q_len) + q.shape[2:])
    kv_axes = "bhdk" if cache_layout else "bkhd"
    logits = jnp.einsum(f"bqhd,{kv_axes}->bhqk", q, k).astype(jnp.float32)
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    weights = jax.nn.softmax(logits, axis=-1)
    if not self.deterministic and self.dropout_rate > 0:
      weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
    out = jnp.einsum(f"bhqk,{kv_axes}->bqhd", weights.astype(self.dtype), v)
    out = out.reshape((query_rows, q_len, inner))
    return dense("out", inputs_q.shape[-1], ("joined_kv", "embed"))(out, adapter_inputs)


class MlpBlock(nn.Module):
  """T5 feed-forward: wo(relu(wi x)) (v1.0) or wo(gelu_tanh(wi_0 x) * wi_1 x) (v1.1)."""

  d_ff: int
  gated: bool
  dropout_rate: float = 0.0
  deterministic: bool = True
  adapter: Optional[Any] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, adapter_inputs: Optional[AdapterInputs]) -> jax.Array:
    """x: [b, l, e] -> [b, l, e]."""
    dense = lambda n, f, axes: AdaptedDense(f, axes, adapter=self.adapter, dtype=self.dtype,
                                            param_dtype=self.param_dtype, name=n)
    if self.gated:
      h = (jax.nn.gelu(dense("wi_0", self.d_ff, ("embed", "mlp"))(x, adapter_inputs),
                       approximate=True)
           * dense("wi_1", self.d_ff, ("embed", "mlp"))(x, adapter_inputs))
    else:
      h = jax.nn.relu(dense("wi", self.d_ff, ("embed", "mlp"))(x, adapter_inputs))
    h = nn.Dropout(self.dropout_rate)(h, deterministic=self.deterministic)
    return dense("wo", x.shape[-1], ("mlp", "embed"))(h, adapter_inputs)


def padding_bias(key_mask: jax.Array) -> jax.Array:
  """Additive mask [b, 1, 1, k]: 0 where keys are real tokens, _MASK_VALUE where padding.

  Only keys are masked (as in HF T5); padded query rows are left to the loss weights.
  """
  return jnp.where(key_mask[:, None, None, :], 0.0, _MASK_VALUE).astype(jnp.float32)


def causal_bias(q_len: int, k_len: int, q_offset: jax.Array | int = 0) -> jax.Array:
  """Additive causal mask [1, 1, q, k]: query i (at i + q_offset) sees keys <= its position."""
  q_pos = jnp.arange(q_len)[:, None] + q_offset
  k_pos = jnp.arange(k_len)[None, :]
  return jnp.where(k_pos <= q_pos, 0.0, _MASK_VALUE)[None, None].astype(jnp.float32)
