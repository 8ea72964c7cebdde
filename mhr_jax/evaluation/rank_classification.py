"""Rank classification: pick the answer choice with the highest log-likelihood.

Each example with C choices becomes C (input, choice) pairs; a choice's score
is the sum of its target tokens' log-probabilities (as in T0 / T-Few), and
the prediction is the argmax over its choices.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

from mhr_jax.evaluation.batching import make_batch


def choice_scores(score_fn: Callable[[dict], np.ndarray], vocab,
                  examples: Sequence[Mapping], input_length: int, target_length: int,
                  batch_size: int) -> list[np.ndarray]:
  """Scores every choice of every example.

  Args:
    score_fn: batch -> [b] summed target log-likelihoods (a jitted score step).
    examples: dicts with 'inputs' (str), 'choices' (list[str]) and 'task_id'.
  Returns:
    One float array [num_choices] per example.
  """
  pairs = [(i, ex["inputs"], c, int(ex["task_id"]))
           for i, ex in enumerate(examples) for c in ex["choices"]]
  scores = np.zeros((len(pairs),), np.float64)
  for start in range(0, len(pairs), batch_size):
    chunk = pairs[start:start + batch_size]
    batch = make_batch(vocab, [p[1] for p in chunk], [p[2] for p in chunk],
                       [p[3] for p in chunk], input_length, target_length, pad_to=batch_size)
    scores[start:start + len(chunk)] = np.asarray(score_fn(batch))[:len(chunk)]
  out, k = [], 0
  for ex in examples:
    n = len(ex["choices"])
    out.append(scores[k:k + n])
    k += n
  return out
