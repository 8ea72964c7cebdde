"""Text metrics in percent (as t5 metrics report them): exact match, Rouge-L, accuracy.

`targets` may hold one reference string per example or a list of acceptable
references; an example scores its best reference (BIG-bench and
Super-NaturalInstructions list several valid answers).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence, Union

import numpy as np

Reference = Union[str, Sequence[str]]


def _references(target: Reference) -> list[str]:
  refs = [target] if isinstance(target, str) else list(target)
  if not refs:
    raise ValueError("an example has an empty list of reference targets")
  return refs


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


def exact_match(targets: Sequence[Reference], predictions: Sequence[str]) -> float:
  """Percentage of predictions equal to one of their references.

  Comparison is case-sensitive (the synthetic `uppercase` skill depends on
  case) after stripping surrounding whitespace.
  """
  _check_lengths(targets, predictions)
  if not predictions:
    return float("nan")
  hits = [any(p.strip() == r.strip() for r in _references(t))
          for t, p in zip(targets, predictions)]
  return 100.0 * float(np.mean(hits))


def rouge_tokens(text: str) -> list[str]:
  """rouge_score's default tokenisation: lowercase, split on non-alphanumerics."""
  return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
  """Length of the longest common subsequence (O(len(a) * len(b)) dynamic programme)."""
  if not a or not b:
    return 0
  prev = [0] * (len(b) + 1)
  for x in a:
    cur = [0]
    for j, y in enumerate(b):
      cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
    prev = cur
  return prev[-1]


def rouge_l_fmeasure(reference: str, prediction: str) -> float:
  """Rouge-L F1 of one prediction against one reference, in [0, 1]."""
  ref, pred = rouge_tokens(reference), rouge_tokens(prediction)
  lcs = _lcs_length(ref, pred)
  if lcs == 0:
    return 0.0
  precision, recall = lcs / len(pred), lcs / len(ref)
  return 2 * precision * recall / (precision + recall)


def rouge_l(targets: Sequence[Reference], predictions: Sequence[str]) -> float:
  """Mean over examples of the best Rouge-L F-measure over references, in percent."""
  _check_lengths(targets, predictions)
  if not predictions:
    return float("nan")
  scores = [max(rouge_l_fmeasure(r, p) for r in _references(t))
            for t, p in zip(targets, predictions)]
  return 100.0 * float(np.mean(scores))


def accuracy(labels: Sequence[int], predictions: Sequence[int]) -> float:
  """Percentage of predicted class indices equal to the labels."""
  _check_lengths(labels, predictions)
  if not labels:
    return float("nan")
  return 100.0 * float(np.mean([int(p) == int(y) for y, p in zip(labels, predictions)]))


def rank_classification_accuracy(scores: Sequence[Sequence[float]],
                                 labels: Sequence[int]) -> float:
  """Accuracy of picking each example's highest-scoring choice.

  Args:
    scores: per example, one score (e.g. summed log-likelihood) per choice.
    labels: index of the correct choice of each example.
  """
  return accuracy(labels, [int(np.argmax(s)) for s in scores])


def multiple_choice_grade(scores: Sequence[Sequence[float]],
                          choice_scores: Sequence[Sequence[float]]) -> float:
  """BIG-bench's multiple_choice_grade in percent: the mean credit of the predicted choices.

  Each example's prediction is its highest-scoring choice, credited with that choice's
  target score (`choice_scores`, BIG-bench's target_scores in choice order): every tied
  correct choice earns full credit, a fractional score fractional credit. With one
  choice scored 1 and the rest 0 it equals `rank_classification_accuracy`.
  """
  _check_lengths(choice_scores, scores)
  if not scores:
    return float("nan")
  return 100.0 * float(np.mean([float(c[int(np.argmax(s))])
                                for s, c in zip(scores, choice_scores)]))


def generation_metrics(targets: Sequence[Reference],
                       predictions: Sequence[str]) -> Mapping[str, float]:
  """seqio-style metric_fn: {'exact_match', 'rouge_l'} in percent."""
  return {"exact_match": exact_match(targets, predictions),
          "rouge_l": rouge_l(targets, predictions)}


def exact_match_metric(targets: Sequence[Reference],
                       predictions: Sequence[str]) -> Mapping[str, float]:
  """seqio-style metric_fn: {'exact_match'} in percent."""
  return {"exact_match": exact_match(targets, predictions)}
