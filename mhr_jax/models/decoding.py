"""Greedy decoding for our T5: with a key/value cache, and a cache-free reference.

Both functions are pure and traceable: wrap them in `jax.jit` with `model`
and `max_decode_length` static, e.g.

    decode = jax.jit(lambda p, enc, tids: greedy_decode(model, p, enc, 32, tids))

Output layout (as HF `generate()` without its start token, right-padded):
tokens [batch, max_decode_length] int32; a row's EOS is kept and every
position after it is 0 (padding).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp

# Token 0 is T5's padding and decoder start token.
_START_ID = 0


def _encode(model, params, encoder_input_tokens, task_ids, single_task):
  """Runs the encoder once: [b, i] -> [b, i, e]."""
  return model.apply({"params": params}, encoder_input_tokens, task_ids=task_ids,
                     deterministic=True, single_task=single_task, method=model.encode)


def _empty_cache(model, params, encoded, encoder_input_tokens, max_decode_length, task_ids,
                 single_task) -> Mapping[str, Any]:
  """A zero key/value cache for `max_decode_length` positions (decode_index 0).

  Its structure is that of the 'cache' collection the model creates when
  called with `decode=True` on a full-length [b, max_len] decoder input; only
  shapes are traced (no decoder pass runs). Zeros are the right start: the
  cached keys/values are written before they are read, the step counter
  starts at 0, and `positions` only carries max_len as a static shape.
  """
  batch = encoder_input_tokens.shape[0]
  dummy = jnp.zeros((batch, max_decode_length), jnp.int32)

  def create(p, enc_out):
    _, variables = model.apply({"params": p}, enc_out, encoder_input_tokens, dummy,
                               task_ids=task_ids, deterministic=True, single_task=single_task,
                               decode=True, mutable=["cache"], method=model.decode)
    return variables["cache"]

  shapes = jax.eval_shape(create, params, encoded)
  return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def greedy_decode(model, params: Mapping[str, Any], encoder_input_tokens: jax.Array,
                  max_decode_length: int, task_ids: Optional[jax.Array] = None,
                  eos_id: Optional[int] = 1, single_task: bool = False) -> jax.Array:
  """Greedy decoding with a self-attention key/value cache, one token per step.

  The encoder runs once; each step feeds the last token [b, 1] through the
  decoder (`decode=True`) and appends its keys/values to the cache. The loop
  is a `jax.lax.while_loop` that stops as soon as every row has emitted EOS.
  Cross-attention keys/values are recomputed from `encoded` each step.

  Args:
    model: a `T5` (with or without adapters).
    params: the tree under 'params' (plain arrays or boxes).
    encoder_input_tokens: [b, i] int32, 0 = padding.
    max_decode_length: static number of tokens to produce.
    task_ids: [b] int32 routing rows, forwarded to the adapters.
    eos_id: token that ends a row; None decodes `max_decode_length` tokens.
    single_task: all rows share `task_ids[0]` (routed adapters mix once).

  Returns:
    tokens [b, max_decode_length] int32 (EOS kept, 0 after it).
  """
  encoder_input_tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
  batch = encoder_input_tokens.shape[0]
  encoded = _encode(model, params, encoder_input_tokens, task_ids, single_task)
  cache = _empty_cache(model, params, encoded, encoder_input_tokens, max_decode_length,
                       task_ids, single_task)

  def step(state):
    i, cache, tokens, last, done = state
    logits, variables = model.apply(
        {"params": params, "cache": cache}, encoded, encoder_input_tokens, last[:, None],
        task_ids=task_ids, deterministic=True, single_task=single_task, decode=True,
        mutable=["cache"], method=model.decode)  # logits [b, 1, v]
    token = jnp.argmax(logits[:, 0], axis=-1).astype(jnp.int32)
    token = jnp.where(done, 0, token)
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, i))
    if eos_id is not None:
      done = done | (token == eos_id)
    return i + 1, variables["cache"], tokens, token, done

  def not_finished(state):
    i, _, _, _, done = state
    return (i < max_decode_length) & ~jnp.all(done)

  state = (jnp.array(0, jnp.int32), cache, jnp.zeros((batch, max_decode_length), jnp.int32),
           jnp.full((batch,), _START_ID, jnp.int32), jnp.zeros((batch,), bool))
  return jax.lax.while_loop(not_finished, step, state)[2]


def greedy_decode_no_cache(model, params: Mapping[str, Any], encoder_input_tokens: jax.Array,
                           max_decode_length: int, task_ids: Optional[jax.Array] = None,
                           eos_id: Optional[int] = 1, single_task: bool = False) -> jax.Array:
  """Reference greedy decoder: re-runs the whole decoder prefix at every step.

  O(max_decode_length^2) decoder work, no cache: step t feeds the full
  [b, max_decode_length] shifted-right sequence (causal, so later
  positions cannot influence position t) and reads position t's logits.
  Same arguments and output as `greedy_decode`.
  """
  encoder_input_tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
  batch = encoder_input_tokens.shape[0]
  encoded = _encode(model, params, encoder_input_tokens, task_ids, single_task)

  def step(t, state):
    tokens, done = state
    decoder_input = jnp.concatenate(
        [jnp.full((batch, 1), _START_ID, jnp.int32), tokens[:, :-1]], axis=1)
    logits = model.apply({"params": params}, encoded, encoder_input_tokens, decoder_input,
                         task_ids=task_ids, deterministic=True, single_task=single_task,
                         method=model.decode)  # [b, max_len, v]
    token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False),
                       axis=-1).astype(jnp.int32)
    token = jnp.where(done, 0, token)
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, t))
    if eos_id is not None:
      done = done | (token == eos_id)
    return tokens, done

  tokens = jnp.zeros((batch, max_decode_length), jnp.int32)
  return jax.lax.fori_loop(0, max_decode_length, step, (tokens, jnp.zeros((batch,), bool)))[0]
