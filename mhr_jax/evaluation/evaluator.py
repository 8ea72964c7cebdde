"""Evaluates one model on one task's examples: rank classification or generation."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import gin
import numpy as np

from mhr_jax.adapters.routing import routing_table_size, validate_task_ids
from mhr_jax.evaluation import predictions as saved
from mhr_jax.evaluation.generation import generate_predictions
from mhr_jax.evaluation.rank_classification import choice_scores
from mhr_jax.models.decoding import beam_search
from mhr_jax.partitioning import Partitioner
from mhr_jax.training.multiple_choice import make_choice_score_step
from tasks import metrics


@gin.configurable(module="mhr_jax")
class Evaluator:
  """Holds the jitted scoring and decoding functions for one model on one mesh.

  Examples are dicts with 'inputs' (str), 'task_id' (int) and either
  'choices' (list[str]) + 'label' (int) for multiple choice, or 'targets'
  (list[str], any of which counts) for generation. Generation decodes with
  `num_beams` beams (1: greedy) and `length_penalty` (`beam_search`), then
  scores with `metrics.generation_metrics` (gin-configurable).

  Parameters keep `param_shardings`; every batch is split over 'data' (the
  batch size is rounded up to a multiple of the data axis and the last batch
  padded with empty rows), so each chip scores only its rows.
  """

  def __init__(self, model, vocab, input_length: int, target_length: int,
               batch_size: int, partitioner: Partitioner, param_shardings: Any,
               single_task: bool = False, length_normalize: bool = False,
               num_beams: int = 1, length_penalty: float = 1.0):
    self.vocab = vocab
    self.input_length, self.target_length = input_length, target_length
    data = partitioner.data_size
    self.batch_size = -(-batch_size // data) * data
    self.partitioner, self.param_shardings = partitioner, param_shardings
    self.n_tasks = routing_table_size(model.adapter)
    rows, out = partitioner.batch_sharding(), partitioner.replicated()
    # Rank classification: each input encoded once, its choices' summed (or,
    # with length_normalize, mean) token log-likelihoods compared.
    self._score = partitioner.jit(make_choice_score_step(model, single_task=single_task,
                                                         length_normalize=length_normalize),
                                  in_shardings=(param_shardings, rows), out_shardings=out)
    self._decode = partitioner.jit(
        lambda params, enc, tids: beam_search(
            model, params, enc, max_decode_length=target_length, num_beams=num_beams,
            length_penalty=length_penalty, task_ids=tids, single_task=single_task),
        in_shardings=(param_shardings, rows, rows), out_shardings=out)

  def _put(self, batch: Mapping[str, np.ndarray]) -> dict:
    return self.partitioner.shard_batch(batch, every_process_has_all=True)

  def evaluate(self, params: Mapping[str, Any], examples: Sequence[Mapping],
               predictions_path: Optional[str] = None) -> dict[str, float]:
    """Returns {'accuracy'} for multiple choice, {'exact_match', 'rouge_l'} otherwise (in %).

    Multiple-choice examples with 'choice_scores' are graded as BIG-bench does
    (`metrics.multiple_choice_grade`). `predictions_path`: also save every example's
    prediction there as JSONL (`mhr_jax.evaluation.predictions`).
    """
    if not examples:
      raise ValueError("no evaluation examples")
    if self.n_tasks is not None:  # on the host: the jitted calls do not check
      validate_task_ids(np.asarray([ex["task_id"] for ex in examples]), self.n_tasks)
    params = self.partitioner.place(params, self.param_shardings)
    if "choices" in examples[0]:
      scores = choice_scores(lambda b: self._score(params, self._put(b)), self.vocab, examples,
                             self.input_length, self.target_length, self.batch_size,
                             row_multiple=self.partitioner.data_size)
      if predictions_path:
        saved.save_predictions(predictions_path, saved.multiple_choice_lines(examples, scores))
      if all("choice_scores" in ex for ex in examples):
        return {"accuracy": metrics.multiple_choice_grade(
            scores, [ex["choice_scores"] for ex in examples])}
      return {"accuracy": metrics.rank_classification_accuracy(scores, [ex["label"] for ex in examples])}

    def decode(batch):
      batch = self._put({k: batch[k] for k in ("encoder_input_tokens", "task_ids")})
      return self._decode(params, batch["encoder_input_tokens"], batch["task_ids"])

    preds = generate_predictions(decode, self.vocab, examples, self.input_length,
                                 self.batch_size)
    if predictions_path:
      saved.save_predictions(predictions_path, saved.generation_lines(examples, preds))
    targets = [list(ex["targets"]) if not isinstance(ex["targets"], str) else [ex["targets"]]
               for ex in examples]
    return dict(metrics.generation_metrics(targets, preds))
