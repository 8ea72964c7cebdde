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


def make_choice_batch(vocab, inputs: Sequence[str], choices: Sequence[Sequence[str]],
                      labels: Sequence[int], task_ids: Sequence[int], input_length: int,
                      target_length: int, pad_to: int | None = None,
                      num_choices: int | None = None) -> dict:
  """A multiple-choice batch (see `mhr_jax.training.multiple_choice`), each input once.

  Returns int32 arrays: encoder_input_tokens [b, input_length], choice_tokens
  [b, C, target_length] (each choice + EOS; a missing choice is all padding),
  labels [b], task_ids [b], decoder_loss_weights [b, target_length] (the
  correct choice's tokens); C = `num_choices` or the most choices of an example.
  Rows past len(inputs) up to `pad_to` are empty.
  """
  n = len(inputs)
  b = max(pad_to or n, n)
  c = max([num_choices or 0] + [len(x) for x in choices])
  enc = np.zeros((b, input_length), np.int32)
  tok = np.zeros((b, c, target_length), np.int32)
  lab = np.zeros((b,), np.int32)
  tids = np.zeros((b,), np.int32)
  for i, (x, cs, y, t) in enumerate(zip(inputs, choices, labels, task_ids)):
    enc[i] = encode_text(vocab, x, input_length)
    for j, choice in enumerate(cs):
      tok[i, j] = encode_text(vocab, choice, target_length)
    lab[i], tids[i] = y, t
  # The LM loss's tokens (the correct choice's), for token counts in the train loop.
  weights = (tok[np.arange(b), lab] > 0).astype(np.int32)
  return {"encoder_input_tokens": enc, "choice_tokens": tok, "labels": lab, "task_ids": tids,
          "decoder_loss_weights": weights}
