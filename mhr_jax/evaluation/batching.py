"""Turns strings into model batches (for evaluation outside the seqio pipeline)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

PAD_ID, EOS_ID = 0, 1


def encode_text(vocab, text: str, length: int) -> np.ndarray:
  """Token ids of `text` + EOS, truncated (keeping EOS) and zero-padded to [length]."""
  ids = list(vocab.encode(text))[:length - 1] + [EOS_ID]
  out = np.zeros((length,), np.int32)
  out[:len(ids)] = ids
  return out


def make_batch(vocab, inputs: Sequence[str], targets: Sequence[str], task_ids: Sequence[int],
               input_length: int, target_length: int, pad_to: int | None = None) -> dict:
  """Encoder-decoder batch for teacher forcing, padded with empty rows to `pad_to`.

  Returns int32 arrays: encoder_input_tokens [b, input_length],
  decoder_input_tokens / decoder_target_tokens / decoder_loss_weights
  [b, target_length], task_ids [b]. Decoder inputs are the targets shifted
  right with 0 as the start token.
  """
  n = len(inputs)
  b = max(pad_to or n, n)
  enc = np.zeros((b, input_length), np.int32)
  tgt = np.zeros((b, target_length), np.int32)
  tids = np.zeros((b,), np.int32)
  for i, (x, y, t) in enumerate(zip(inputs, targets, task_ids)):
    enc[i] = encode_text(vocab, x, input_length)
    tgt[i] = encode_text(vocab, y, target_length)
    tids[i] = t
  dec_in = np.zeros_like(tgt)
  dec_in[:, 1:] = tgt[:, :-1]
  return {"encoder_input_tokens": enc, "decoder_input_tokens": dec_in,
          "decoder_target_tokens": tgt,
          "decoder_loss_weights": (tgt > 0).astype(np.int32), "task_ids": tids}


def decode_tokens(vocab, tokens: np.ndarray) -> str:
  """Ids up to the first EOS (or padding) -> string."""
  ids = []
  for t in np.asarray(tokens).tolist():
    if t in (EOS_ID, PAD_ID):
      break
    ids.append(int(t))
  return vocab.decode(ids)
