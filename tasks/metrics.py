"""Text metrics in percent (as t5 metrics report them): exact match, Rouge-L, accuracy.

`targets` may hold one reference string per example or a list of acceptable
references (BIG-bench and Super-NaturalInstructions list several valid
answers). Which references an example is scored against (`reference`):

- "max": its best reference (the official Super-NaturalInstructions script,
  `eval/automatic/evaluation.py`, `metric_max_over_ground_truths`);
- "sampled": one reference drawn per example, as mttl's fine-tuning
  evaluation does (`random.choice` of the instance outputs in its NI
  collator, mttl/datamodule/ni_original_data_module.py:237, scored in
  mttl/models/encoder_decoder.py:207); drawn here from a fixed seed and
  the example's position, so the choice is reproducible.
"""

from __future__ import annotations

import functools
import random
import string
from typing import Mapping, Sequence, Union

import gin
import numpy as np
from rouge_score import rouge_scorer

Reference = Union[str, Sequence[str]]
REFERENCE_CHOICES = ("max", "sampled")
_PUNCTUATION = frozenset(string.punctuation)


def _references(target: Reference) -> list[str]:
  refs = [target] if isinstance(target, str) else list(target)
  if not refs:
    raise ValueError("an example has an empty list of reference targets")
  return refs


def _check_lengths(targets: Sequence, predictions: Sequence) -> None:
  if len(targets) != len(predictions):
    raise ValueError(f"{len(targets)} targets but {len(predictions)} predictions")


def scored_references(targets: Sequence[Reference], reference: str,
                       seed: int = 0) -> list[list[str]]:
  """The references each example is scored against under `reference`."""
  if reference not in REFERENCE_CHOICES:
    raise ValueError(f"reference={reference!r}; valid choices: {list(REFERENCE_CHOICES)}")
  refs = [_references(t) for t in targets]
  if reference == "max":
    return refs
  return [[random.Random(seed * 1_000_003 + i).choice(r)] for i, r in enumerate(refs)]


def _mean_best(score, targets: Sequence[Reference], predictions: Sequence[str],
               reference: str, seed: int) -> float:
  """100 x mean over examples of max over scored references of score(reference, prediction)."""
  _check_lengths(targets, predictions)
  if not predictions:
    return float("nan")
  refs = scored_references(targets, reference, seed)
  return 100.0 * float(np.mean([max(score(r, p) for r in rs)
                                for rs, p in zip(refs, predictions)]))


def normalize_answer(text: str) -> str:
  """The official Super-NaturalInstructions normalisation: lower-case, drop punctuation,
  collapse whitespace (SQuAD's, without its article removal)."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(text.split())


def exact_match(targets: Sequence[Reference], predictions: Sequence[str],
                normalize: bool = False, reference: str = "max", seed: int = 0) -> float:
  """Percentage of predictions equal to a scored reference.

  normalize=False compares case-sensitively after stripping surrounding
  whitespace (the synthetic `uppercase` skill depends on case);
  normalize=True compares `normalize_answer` forms (Super-NaturalInstructions).
  """
  norm = normalize_answer if normalize else str.strip
  return _mean_best(lambda r, p: float(norm(p) == norm(r)), targets, predictions,
                    reference, seed)


@functools.lru_cache(maxsize=1)
def _rouge_l_scorer() -> rouge_scorer.RougeScorer:
  return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_tokens(text: str) -> list[str]:
  """rouge_score's tokenisation with the Porter stemmer (lower-case, alphanumeric runs)."""
  return _rouge_l_scorer()._tokenizer.tokenize(text)  # pylint: disable=protected-access


def rouge_l_fmeasure(reference: str, prediction: str) -> float:
  """Rouge-L F1 of one prediction against one reference, in [0, 1] (`rouge_score`,
  Porter stemmer: the official Super-NaturalInstructions setting)."""
  return _rouge_l_scorer().score(reference, prediction)["rougeL"].fmeasure


def rouge_l(targets: Sequence[Reference], predictions: Sequence[str],
            reference: str = "max", seed: int = 0) -> float:
  """Mean over examples of the Rouge-L F-measure against the scored references, in percent."""
  return _mean_best(rouge_l_fmeasure, targets, predictions, reference, seed)


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


@gin.configurable(module="mhr_jax")
def generation_metrics(targets: Sequence[Reference], predictions: Sequence[str], *,
                       normalize: bool = False, reference: str = "max",
                       seed: int = 0) -> Mapping[str, float]:
  """seqio-style metric_fn: {'exact_match', 'rouge_l'} in percent.

  normalize: exact match on `normalize_answer` forms; reference: "max" or
  "sampled" (module docstring); seed: the draw of "sampled".
  """
  return {"exact_match": exact_match(targets, predictions, normalize, reference, seed),
          "rouge_l": rouge_l(targets, predictions, reference, seed)}


def exact_match_metric(targets: Sequence[Reference],
                       predictions: Sequence[str]) -> Mapping[str, float]:
  """seqio-style metric_fn: {'exact_match'} in percent."""
  return {"exact_match": exact_match(targets, predictions)}
