"""T5 encoder-decoder in Flax linen, with adapter hooks in every projection.

Shapes: b = batch, i = encoder length, t = decoder length, e = d_model,
v = vocab. Token 0 is padding and the decoder start token.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.adapters.inputs import AdapterInputs
from mhr_jax.adapters.layers import build_shared_router
from mhr_jax.adapters.routing import check_task_ids
from mhr_jax.models.layers import (MlpBlock, MultiHeadAttention, RMSNorm,
                                   RelativePositionBiases, causal_bias,
                                   padding_bias)
from mhr_jax.models.t5_config import T5Config
from mhr_jax.param_tree import Role, declare_roles


class EncoderLayer(nn.Module):
  """Pre-norm self-attention + MLP, residual connections, dropout."""

  config: T5Config
  deterministic: bool = True
  adapter: Optional[AdapterConfig] = None

  @nn.compact
  def __call__(self, x: jax.Array, aux: tuple) -> tuple[jax.Array, None]:
    """x: [b, i, e]; aux = (attention bias [b, h, i, i], AdapterInputs)."""
    cfg = self.config
    bias, adapter_inputs = aux
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    drop = lambda y: nn.Dropout(cfg.dropout_rate)(y, deterministic=self.deterministic)
    h = RMSNorm(cfg.layer_norm_epsilon, name="pre_attention_layer_norm", **kw)(x)
    h = MultiHeadAttention(cfg.num_heads, cfg.d_kv, cfg.dropout_rate, self.deterministic,
                           adapter=self.adapter, name="attention", **kw)(
                               h, h, bias, adapter_inputs)
    x = x + drop(h)
    h = RMSNorm(cfg.layer_norm_epsilon, name="pre_mlp_layer_norm", **kw)(x)
    h = MlpBlock(cfg.d_ff, cfg.is_gated, cfg.dropout_rate, self.deterministic,
                 adapter=self.adapter, name="mlp", **kw)(h, adapter_inputs)
    return x + drop(h), None


class DecoderLayer(nn.Module):
  """Pre-norm causal self-attention, cross-attention, MLP."""

  config: T5Config
  deterministic: bool = True
  decode: bool = False
  cache_length: Optional[int] = None
  adapter: Optional[AdapterConfig] = None

  @nn.compact
  def __call__(self, y: jax.Array, aux: tuple) -> tuple[jax.Array, None]:
    """y: [b, t, e]; aux = (self bias, encoded [b, i, e], cross bias, AdapterInputs, decode_index).

    With `decode=True`, self-attention caches `cache_length` steps of
    keys/values and cross-attention caches its projected encoder keys/values.
    """
    cfg = self.config
    self_bias, encoded, cross_bias, adapter_inputs, decode_index = aux
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    drop = lambda z: nn.Dropout(cfg.dropout_rate)(z, deterministic=self.deterministic)
    attn = lambda name, **cache: MultiHeadAttention(
        cfg.num_heads, cfg.d_kv, cfg.dropout_rate, self.deterministic, adapter=self.adapter,
        name=name, **cache, **kw)
    h = RMSNorm(cfg.layer_norm_epsilon, name="pre_self_attention_layer_norm", **kw)(y)
    h = attn("self_attention", decode=self.decode, cache_length=self.cache_length)(
        h, h, self_bias, adapter_inputs, decode_index)
    y = y + drop(h)
    h = RMSNorm(cfg.layer_norm_epsilon, name="pre_cross_attention_layer_norm", **kw)(y)
    h = attn("encoder_decoder_attention", cache_kv_input=self.decode)(
        h, encoded, cross_bias, adapter_inputs)
    y = y + drop(h)
    h = RMSNorm(cfg.layer_norm_epsilon, name="pre_mlp_layer_norm", **kw)(y)
    h = MlpBlock(cfg.d_ff, cfg.is_gated, cfg.dropout_rate, self.deterministic,
                 adapter=self.adapter, name="mlp", **kw)(h, adapter_inputs)
    return y + drop(h), None


def _stack(layer_cls, config: T5Config, num_layers: int, x: jax.Array, aux: tuple,
           **layer_kwargs) -> jax.Array:
  """Applies `num_layers` layers: unrolled (layers_0, layers_1, ...) or scanned ('layers')."""
  if config.remat:
    layer_cls = nn.remat(layer_cls, prevent_cse=not config.scan_layers)
  if config.scan_layers:
    scanned = nn.scan(
        layer_cls, variable_axes={"params": 0, "cache": 0},
        split_rngs={"params": True, "dropout": True, "routing": True},
        in_axes=nn.broadcast, length=num_layers,
        metadata_params={nn.PARTITION_NAME: "layers"})
    x, _ = scanned(config, name="layers", **layer_kwargs)(x, aux)
    return x
  for i in range(num_layers):
    x, _ = layer_cls(config, name=f"layers_{i}", **layer_kwargs)(x, aux)
  return x


class Encoder(nn.Module):
  config: T5Config
  adapter: Optional[AdapterConfig] = None

  @nn.compact
  def __call__(self, embedded: jax.Array, input_mask: jax.Array,
               adapter_inputs: Optional[AdapterInputs], deterministic: bool = True) -> jax.Array:
    """embedded: [b, i, e], input_mask: [b, i] bool -> encoded [b, i, e]."""
    cfg = self.config
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    length = embedded.shape[1]
    bias = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                  cfg.relative_attention_max_distance, cfg.num_heads,
                                  bidirectional=True, name="relpos_bias", **kw)(length, length)
    bias = bias + padding_bias(input_mask)
    x = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
    x = _stack(EncoderLayer, cfg, cfg.num_layers, x, (bias, adapter_inputs),
               deterministic=deterministic, adapter=self.adapter)
    x = RMSNorm(cfg.layer_norm_epsilon, name="encoder_norm", **kw)(x)
    return nn.Dropout(cfg.dropout_rate)(x, deterministic=deterministic)


class Decoder(nn.Module):
  """Decoder stack; with `decode=True`, one step at a time against a KV cache."""

  config: T5Config
  adapter: Optional[AdapterConfig] = None

  @nn.compact
  def __call__(self, embedded: jax.Array, encoded: jax.Array, encoder_mask: jax.Array,
               adapter_inputs: Optional[AdapterInputs], deterministic: bool = True,
               decode: bool = False, max_decode_length: Optional[int] = None) -> jax.Array:
    """embedded: [b, t, e], encoded: [b, i, e], encoder_mask: [b, i] -> hidden [b, t, e].

    decode: the call that creates the cache sizes it for `max_decode_length`
      steps (default: its own length t) and stores the projected encoder
      keys/values; each later call is one step [b, 1, e].
    """
    cfg = self.config
    kw = dict(dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype))
    q_len = embedded.shape[1]
    decode_index = None
    k_len, offset = q_len, 0
    if decode:
      # `positions` keeps the cache length as a static shape for later steps.
      initialized = self.has_variable("cache", "decode_index")
      index = self.variable("cache", "decode_index", lambda: jnp.array(0, jnp.int32))
      positions = self.variable("cache", "positions",
                                lambda: jnp.arange(max_decode_length or q_len, dtype=jnp.int32))
      if initialized:
        decode_index = index.value
        offset = decode_index
        k_len = positions.value.shape[0]
        index.value = decode_index + 1
    relpos = RelativePositionBiases(cfg.relative_attention_num_buckets,
                                    cfg.relative_attention_max_distance, cfg.num_heads,
                                    bidirectional=False, name="relpos_bias", **kw)
    self_bias = relpos(q_len, k_len, offset) + causal_bias(q_len, k_len, offset)
    cross_bias = padding_bias(encoder_mask)
    y = nn.Dropout(cfg.dropout_rate)(embedded, deterministic=deterministic)
    y = _stack(DecoderLayer, cfg, cfg.num_decoder_layers, y,
               (self_bias, encoded, cross_bias, adapter_inputs, decode_index),
               deterministic=deterministic, decode=decode, cache_length=max_decode_length,
               adapter=self.adapter)
    y = RMSNorm(cfg.layer_norm_epsilon, name="decoder_norm", **kw)(y)
    return nn.Dropout(cfg.dropout_rate)(y, deterministic=deterministic)


@declare_roles(embedding=Role.BACKBONE)  # the token embedder's table (an nn.Embed)
class T5(nn.Module):
  """T5 encoder-decoder with optional routed adapters.

  Attributes:
    config: architecture (`T5Config`).
    adapter: an `AdapterConfig` choosing which projections carry which
      adapter; None for the plain model.
    check_task_ids_in_jit: also check routed task ids inside jitted code,
      through a host callback. Off by default: the callback cost a measured
      ~18 ms of a 53 ms CPU train step. Concrete ids are always checked, the
      stages check every batch on the host, and an id that escapes both reads
      a NaN routing row (its loss and outputs become NaN).
  """

  config: T5Config
  adapter: Optional[AdapterConfig] = None
  check_task_ids_in_jit: bool = False

  def setup(self):
    cfg = self.config
    self.token_embedder = nn.Embed(
        cfg.vocab_size, cfg.d_model, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype),
        embedding_init=nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                    ("vocab", "embed")),
        name="token_embedder")
    if not cfg.tie_word_embeddings:
      self.logits_dense = nn.Dense(
          cfg.vocab_size, use_bias=False, dtype=jnp.float32,
          param_dtype=jnp.dtype(cfg.param_dtype),
          # fan-in scaled so a model trained from scratch starts with O(1) logits.
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.variance_scaling(1.0, "fan_in", "normal"), ("embed", "vocab")),
          name="logits_dense")
    self.encoder = Encoder(cfg, adapter=self.adapter)
    self.decoder = Decoder(cfg, adapter=self.adapter)
    if self.adapter is not None and self.adapter.shared_routing:
      self.router = build_shared_router(self.adapter, name="router")

  def adapter_inputs(self, task_ids: Optional[jax.Array], batch: int, deterministic: bool,
                     single_task: bool) -> Optional[AdapterInputs]:
    if self.adapter is None:
      return None
    if task_ids is None:
      if self.adapter.routed and not self.is_initializing():
        # Never a silent row 0: a routed model is told which task each example is.
        raise ValueError("routed adapters (kind='poly') need task_ids [batch]; got None")
      task_ids = jnp.zeros((batch,), jnp.int32)  # unread by unrouted adapters
    if self.adapter.routed:
      # Out-of-range ids raise (eagerly, or from a callback under jit when
      # asked) rather than silently reading another task's routing row.
      check_task_ids(task_ids, self.adapter.n_tasks, in_jit=self.check_task_ids_in_jit)
    weights = None
    if self.adapter.shared_routing:
      weights = self.router(task_ids, deterministic=deterministic)
    return AdapterInputs(task_ids=task_ids.astype(jnp.int32), routing_weights=weights,
                         single_task=single_task, deterministic=deterministic)

  def encode(self, encoder_input_tokens: jax.Array, task_ids: Optional[jax.Array] = None,
             deterministic: bool = True, single_task: bool = False,
             adapter_inputs: Optional[AdapterInputs] = None) -> jax.Array:
    """encoder_input_tokens: [b, i] int32 -> encoded [b, i, e]."""
    if adapter_inputs is None:
      adapter_inputs = self.adapter_inputs(task_ids, encoder_input_tokens.shape[0],
                                           deterministic, single_task)
    return self.encoder(self.token_embedder(encoder_input_tokens), encoder_input_tokens > 0,
                        adapter_inputs, deterministic)

  def decode(self, encoded: jax.Array, encoder_input_tokens: jax.Array,
             decoder_input_tokens: jax.Array, task_ids: Optional[jax.Array] = None,
             deterministic: bool = True, single_task: bool = False,
             decode: bool = False,
             adapter_inputs: Optional[AdapterInputs] = None,
             max_decode_length: Optional[int] = None) -> jax.Array:
    """Decoder logits [b, t, v] (float32) given encoded [b, i, e] and decoder inputs [b, t].

    With `decode=True`, the first call (mutable 'cache') creates the caches:
    self-attention keys/values for `max_decode_length` positions (default t)
    and each layer's cross-attention keys/values of `encoded`; later calls
    feed one token [b, 1] per step and no longer read `encoded`.
    """
    cfg = self.config
    if adapter_inputs is None:
      adapter_inputs = self.adapter_inputs(task_ids, decoder_input_tokens.shape[0],
                                           deterministic, single_task)
    y = self.decoder(self.token_embedder(decoder_input_tokens), encoded,
                     encoder_input_tokens > 0, adapter_inputs, deterministic, decode,
                     max_decode_length)
    if cfg.scale_decoder_outputs:
      y = y * (cfg.d_model ** -0.5)
    if cfg.tie_word_embeddings:
      # Not `token_embedder.attend`: it casts to the activation dtype (bf16 logits).
      embedding = jnp.asarray(self.token_embedder.embedding, jnp.float32)
      return jnp.einsum("bte,ve->btv", y.astype(jnp.float32), embedding)
    return self.logits_dense(y.astype(jnp.float32))

  def __call__(self, encoder_input_tokens: jax.Array, decoder_input_tokens: jax.Array,
               task_ids: Optional[jax.Array] = None, deterministic: bool = True,
               single_task: bool = False) -> jax.Array:
    """Teacher-forced logits [b, t, v] for encoder inputs [b, i] and decoder inputs [b, t]."""
    # One routing context for both stacks (a shared router samples once).
    ai = self.adapter_inputs(task_ids, encoder_input_tokens.shape[0], deterministic,
                             single_task)
    encoded = self.encode(encoder_input_tokens, deterministic=deterministic, adapter_inputs=ai)
    return self.decode(encoded, encoder_input_tokens, decoder_input_tokens,
                       deterministic=deterministic, adapter_inputs=ai)
