"""Generative evaluation: decoding (greedy or beam search), then exact match and Rouge-L."""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from mhr_jax.evaluation.batching import decode_tokens, make_batch


def generate_predictions(decode_fn: Callable[[dict], np.ndarray], vocab,
                         examples: Sequence[Mapping], input_length: int,
                         batch_size: int) -> list[str]:
  """Decoded predictions (strings) for examples with 'inputs' and 'task_id'.

  decode_fn: batch -> tokens [b, max_decode_len] (a jitted greedy or beam decoder).
  """
  preds = []
  for start in range(0, len(examples), batch_size):
    chunk = examples[start:start + batch_size]
    batch = make_batch(vocab, [ex["inputs"] for ex in chunk], [""] * len(chunk),
                       [int(ex["task_id"]) for ex in chunk], input_length, 1,
                       pad_to=batch_size)
    tokens = np.asarray(decode_fn(batch))
    preds.extend(decode_tokens(vocab, tokens[i]) for i in range(len(chunk)))
  return preds
