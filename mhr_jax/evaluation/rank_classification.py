"""Rank classification: pick the answer choice with the highest log-likelihood.

Each example's input is encoded once and all its choices are scored against
it (`training.multiple_choice.make_choice_score_step`): a choice's score is
the sum of its target tokens' log-probabilities, or their mean over its
non-pad tokens, EOS included (`length_normalize`, mttl's / T-Few's
`length_norm`); the prediction is the argmax over the example's choices.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from mhr_jax.evaluation.batching import make_choice_batch


def choice_scores(score_fn: Callable[[dict], np.ndarray], vocab,
                  examples: Sequence[Mapping], input_length: int, target_length: int,
                  batch_size: int) -> list[np.ndarray]:
  """Scores every choice of every example.

  Args:
    score_fn: choice batch (`make_choice_batch`) -> [b, C] choice scores.
    examples: dicts with 'inputs' (str), 'choices' (list[str]) and 'task_id'.
    batch_size: (example, choice) pairs per call; a batch holds
      max(1, batch_size // C) examples, C the most choices of any example.
  Returns:
    One float array [num_choices] per example.
  """
  c = max(len(ex["choices"]) for ex in examples)
  per_batch = max(1, batch_size // c)
  out = []
  for start in range(0, len(examples), per_batch):
    chunk = examples[start:start + per_batch]
    batch = make_choice_batch(vocab, [ex["inputs"] for ex in chunk],
                              [ex["choices"] for ex in chunk], [0] * len(chunk),
                              [int(ex["task_id"]) for ex in chunk], input_length,
                              target_length, pad_to=per_batch, num_choices=c)
    scores = np.asarray(score_fn(batch), np.float64)
    out.extend(scores[i, :len(ex["choices"])] for i, ex in enumerate(chunk))
  return out
