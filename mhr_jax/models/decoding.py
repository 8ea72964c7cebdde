"""Decoding for our T5: greedy and beam search with key/value caches, and a cache-free reference.

All are pure and traceable: wrap them in `jax.jit` with `model`,
`max_decode_length` (and `num_beams`) static, e.g.

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


def _init_cache(model, params, encoded, encoder_input_tokens, max_decode_length, task_ids,
                single_task) -> Mapping[str, Any]:
  """The decoding caches, filled for the cross-attention and empty for self-attention.

  One decoder call on a single start token [b, 1] with a mutable 'cache'
  creates them: each layer's cross-attention projects `encoded` to
  keys/values once (later steps only read them), the self-attention caches
  are zeros for `max_decode_length` positions (written before they are read)
  and the step counter starts at 0. The call's logits are discarded.
  """
  start = jnp.full((encoder_input_tokens.shape[0], 1), _START_ID, jnp.int32)
  _, variables = model.apply({"params": params}, encoded, encoder_input_tokens, start,
                             task_ids=task_ids, deterministic=True, single_task=single_task,
                             decode=True, max_decode_length=max_decode_length,
                             mutable=["cache"], method=model.decode)
  return variables["cache"]


def _decode_step(model, params, cache, encoded, encoder_input_tokens, last_tokens, task_ids,
                 single_task):
  """One cached decoder step: last tokens [b] -> (float32 logits [b, v], new cache)."""
  logits, variables = model.apply(
      {"params": params, "cache": cache}, encoded, encoder_input_tokens, last_tokens[:, None],
      task_ids=task_ids, deterministic=True, single_task=single_task, decode=True,
      mutable=["cache"], method=model.decode)  # logits [b, 1, v]
  return logits[:, 0].astype(jnp.float32), variables["cache"]


def greedy_decode(model, params: Mapping[str, Any], encoder_input_tokens: jax.Array,
                  max_decode_length: int, task_ids: Optional[jax.Array] = None,
                  eos_id: Optional[int] = 1, single_task: bool = False) -> jax.Array:
  """Greedy decoding with a self-attention key/value cache, one token per step.

  The encoder runs once, and so do the cross-attention key/value projections
  of its output; each step feeds the last token [b, 1] through the decoder
  (`decode=True`) and appends its keys/values to the cache. The loop is a
  `jax.lax.while_loop` that stops as soon as every row has emitted EOS.

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
  cache = _init_cache(model, params, encoded, encoder_input_tokens, max_decode_length,
                      task_ids, single_task)

  def step(state):
    i, cache, tokens, last, done = state
    logits, cache = _decode_step(model, params, cache, encoded, encoder_input_tokens, last,
                                 task_ids, single_task)
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    token = jnp.where(done, 0, token)
    tokens = jax.lax.dynamic_update_slice(tokens, token[:, None], (0, i))
    if eos_id is not None:
      done = done | (token == eos_id)
    return i + 1, cache, tokens, token, done

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


# Score of an impossible hypothesis, as in transformers' beam search (finite,
# so sums stay ordered and NaN-free).
_NEG = -1.0e9


def _map_self_attention_cache(cache, fn, scan_layers: bool):
  """Applies fn(leaf, beam_axis) to the self-attention keys/values of the cache.

  Only they follow the beams: the cross-attention keys/values are per input,
  and the step counter and positions are scalars/static. Scanned layers stack
  caches on axis 0, so their beam axis is 1.
  """
  axis = 1 if scan_layers else 0

  def apply(path, leaf):
    name = getattr(path[-1], "key", None)
    return fn(leaf, axis) if name in ("cached_key", "cached_value") else leaf

  return jax.tree_util.tree_map_with_path(apply, cache)


def beam_search(model, params: Mapping[str, Any], encoder_input_tokens: jax.Array,
                max_decode_length: int, num_beams: int, length_penalty: float | jax.Array = 1.0,
                task_ids: Optional[jax.Array] = None, eos_id: int = 1,
                single_task: bool = False) -> jax.Array:
  """Beam search, token for token as transformers' `generate(num_beams=n, early_stopping=False)`.

  Per input row, `num_beams` running hypotheses extend by one token per step
  (self-attention caches: [b * n] rows, reordered to follow their beams;
  cross-attention keys/values: computed once per input, shared by its beams). With s(y) the summed token log-probabilities of hypothesis y:

  1. The 2n best candidates (beam, token) by s are taken over all n x v
     continuations; the n best that did not just end (EOS, or the last step)
     keep running.
  2. Those of the n best candidates that did just end are offered to the
     row's n finished hypotheses with score s(y) / |y|^length_penalty
     (|y| counts the generated tokens, EOS included); the n best are kept.
     (length_penalty > 0 favours longer outputs: scores are negative.)
  3. A row closes (accepts nothing more) once it holds n finished
     hypotheses and its best running s / t^length_penalty, t its current
     length, does not beat the worst of them (transformers'
     `early_stopping=False` heuristic, exact only for length_penalty <= 1);
     decoding stops when every row is closed or after `max_decode_length`
     steps, where every running hypothesis ends.

  The result is each row's best finished hypothesis. `num_beams=1` is greedy
  decoding, as in `generate` (whose beam search is not used for one beam).

  Args:
    model: a `T5` (with or without adapters).
    params: the tree under 'params'.
    encoder_input_tokens: [b, i] int32, 0 = padding.
    max_decode_length: static number of tokens to produce at most.
    num_beams: static n >= 1.
    length_penalty: exponent of the length normalisation (may be traced).
    task_ids: [b] int32 routing rows (each repeated over its row's beams).
    eos_id: token that ends a hypothesis.
    single_task: all rows share `task_ids[0]`.

  Returns:
    tokens [b, max_decode_length] int32 (EOS kept, 0 after it).
  """
  if num_beams < 1:
    raise ValueError(f"num_beams={num_beams}; must be >= 1")
  if num_beams == 1:
    return greedy_decode(model, params, encoder_input_tokens, max_decode_length, task_ids,
                         eos_id, single_task)

  encoder_input_tokens = jnp.asarray(encoder_input_tokens, jnp.int32)
  batch, n, length = encoder_input_tokens.shape[0], num_beams, max_decode_length
  k = 2 * n  # candidates kept per step: at most n of them end with EOS
  encoded = _encode(model, params, encoder_input_tokens, task_ids, single_task)
  beams = lambda x: jnp.repeat(x, n, axis=0)  # [b, ...] -> [b * n, ...], beams of a row together
  beam_task_ids = None if task_ids is None else beams(jnp.asarray(task_ids, jnp.int32))
  scan_layers = bool(getattr(model.config, "scan_layers", False))
  # Caches made per input: the cross-attention keys/values stay [b, ...] (the
  # beams' queries attend to them as groups of n rows); the self-attention
  # caches (zeros) widen to one row per beam.
  cache = _init_cache(model, params, encoded, encoder_input_tokens, length, task_ids,
                      single_task)
  cache = _map_self_attention_cache(
      cache, lambda leaf, axis: jnp.repeat(leaf, n, axis=axis), scan_layers)
  penalty = jnp.asarray(length_penalty, jnp.float32)
  row_offset = (jnp.arange(batch, dtype=jnp.int32) * n)[:, None]  # [b, 1]

  def gather(x, index):  # x [b, m, ...], index [b, j] -> [b, j, ...]
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)

  def step(state):
    (t, cache, running, running_scores, finished, finished_scores, finished_flags,
     open_rows) = state
    last = jnp.where(t == 0, _START_ID,
                     jax.lax.dynamic_index_in_dim(running, jnp.maximum(t - 1, 0), axis=2,
                                                  keepdims=False))  # [b, n]
    logits, cache = _decode_step(model, params, cache, encoded, encoder_input_tokens,
                                 last.reshape(-1), beam_task_ids, single_task)
    vocab = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1).reshape(batch, n, vocab)
    totals = (log_probs + running_scores[:, :, None]).reshape(batch, n * vocab)
    top_scores, top_index = jax.lax.top_k(totals, k)  # [b, 2n]
    source_beam = (top_index // vocab).astype(jnp.int32)
    token = (top_index % vocab).astype(jnp.int32)
    candidates = jax.lax.dynamic_update_slice_in_dim(
        gather(running, source_beam), token[:, :, None], t, axis=2)  # [b, 2n, L]
    ends = (token == eos_id) | (t == length - 1)

    # 1. The n best candidates that go on.
    go_on_scores = top_scores + ends.astype(jnp.float32) * _NEG
    keep = jax.lax.top_k(go_on_scores, n)[1]
    running, running_scores = gather(candidates, keep), gather(go_on_scores, keep)
    rows = (gather(source_beam, keep) + row_offset).reshape(-1)  # [b * n] flat beam rows
    cache = _map_self_attention_cache(
        cache, lambda leaf, axis: jnp.take(leaf, rows, axis=axis), scan_layers)

    # 2. Finished candidates among the n best, merged into the row's n finished.
    just_ended = ends & (jnp.arange(k) < n)[None, :]
    offered = top_scores / jnp.power((t + 1).astype(jnp.float32), penalty)
    offered = offered + (~open_rows)[:, None].astype(jnp.float32) * _NEG
    offered = offered + (~just_ended).astype(jnp.float32) * _NEG
    merged_scores = jnp.concatenate([finished_scores, offered], axis=1)
    best = jax.lax.top_k(merged_scores, n)[1]
    finished = gather(jnp.concatenate([finished, candidates], axis=1), best)
    finished_scores = gather(merged_scores, best)
    finished_flags = gather(jnp.concatenate([finished_flags, just_ended], axis=1), best)

    # 3. Rows whose running beams can no longer improve (sticky).
    best_possible = running_scores[:, :1] / jnp.power((t + 1).astype(jnp.float32), penalty)
    worst_finished = jnp.where(finished_flags, jnp.min(finished_scores, axis=1, keepdims=True),
                               _NEG)
    open_rows = open_rows & jnp.any(best_possible > worst_finished, axis=-1)
    return (t + 1, cache, running, running_scores, finished, finished_scores, finished_flags,
            open_rows)

  def not_finished(state):
    t, open_rows = state[0], state[-1]
    return (t < length) & jnp.any(open_rows)

  zeros = jnp.zeros((batch, n, length), jnp.int32)
  # Only beam 0 is live at the start, so the first step does not pick n copies.
  first_scores = jnp.where(jnp.arange(n) == 0, 0.0, _NEG).astype(jnp.float32)
  state = (jnp.array(0, jnp.int32), cache, zeros, jnp.tile(first_scores, (batch, 1)), zeros,
           jnp.full((batch, n), _NEG, jnp.float32), jnp.zeros((batch, n), bool),
           jnp.ones((batch,), bool))
  state = jax.lax.while_loop(not_finished, step, state)
  return state[4][:, 0]  # finished hypotheses are sorted best first

