"""Evaluates one model on one task's examples: rank classification or generation."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import gin
import jax
import numpy as np

from mhr_jax.adapters.routing import routing_table_size, validate_task_ids
from mhr_jax.evaluation import metrics
from mhr_jax.evaluation.generation import generate_predictions
from mhr_jax.evaluation.rank_classification import choice_scores
from mhr_jax.models.decoding import beam_search
from mhr_jax.training.step import make_score_step


@gin.configurable(module="mhr_jax")
class Evaluator:
  """Holds the jitted scoring and decoding functions for one model.

  Examples are dicts with 'inputs' (str), 'task_id' (int) and either
  'choices' (list[str]) + 'label' (int) for multiple choice, or 'targets'
  (list[str], any of which counts) for generation. Generation decodes with
  `num_beams` beams (1: greedy) and `length_penalty` (`beam_search`), then
  scores with `metrics.generation_metrics` (gin-configurable).
  """

  def __init__(self, model, vocab, input_length: int, target_length: int,
               batch_size: int = 32, single_task: bool = False, num_beams: int = 1,
               length_penalty: float = 1.0):
    self.vocab = vocab
    self.input_length, self.target_length = input_length, target_length
    self.batch_size = batch_size
    self.n_tasks = routing_table_size(model.adapter)
    self._score = jax.jit(make_score_step(model, single_task=single_task))
    self._decode = jax.jit(lambda params, enc, tids: beam_search(
        model, params, enc, max_decode_length=target_length, num_beams=num_beams,
        length_penalty=length_penalty, task_ids=tids, single_task=single_task))

  def evaluate(self, params: Mapping[str, Any], examples: Sequence[Mapping]) -> dict[str, float]:
    """Returns {'accuracy'} for multiple choice, {'exact_match', 'rouge_l'} otherwise (in %)."""
    if not examples:
      raise ValueError("no evaluation examples")
    if self.n_tasks is not None:  # on the host: the jitted calls do not check
      validate_task_ids(np.asarray([ex["task_id"] for ex in examples]), self.n_tasks)
    if "choices" in examples[0]:
      scores = choice_scores(lambda b: self._score(params, b), self.vocab, examples,
                             self.input_length, self.target_length, self.batch_size)
      return {"accuracy": metrics.rank_classification_accuracy(scores, [ex["label"] for ex in examples])}
    preds = generate_predictions(
        lambda b: self._decode(params, b["encoder_input_tokens"], b["task_ids"]),
        self.vocab, examples, self.input_length, self.batch_size)
    targets = [list(ex["targets"]) if not isinstance(ex["targets"], str) else [ex["targets"]]
               for ex in examples]
    return dict(metrics.generation_metrics(targets, preds))
