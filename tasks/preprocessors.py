"""seqio preprocessors shared by every family: task id, then tokenization."""

from __future__ import annotations

import functools
from typing import Callable, Mapping

import seqio
import tensorflow as tf


def add_task_id(dataset: tf.data.Dataset, task_id: int) -> tf.data.Dataset:
  """Adds the scalar int32 feature `task_id` (the task's routing row) to every example."""
  task_id = int(task_id)

  def add(ex):
    return {**ex, "task_id": tf.constant(task_id, tf.int32)}

  return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
  """`inputs` and `targets`, both tokenized with `vocabulary` and ended by EOS."""
  return {"inputs": seqio.Feature(vocabulary, add_eos=True),
          "targets": seqio.Feature(vocabulary, add_eos=True)}


def task_preprocessors(format_preprocessors, task_id: int) -> list[Callable]:
  """Formatting (task-specific), task id, tokenization (keeps *_pretokenized), EOS."""
  return [*format_preprocessors,
          functools.partial(add_task_id, task_id=task_id),
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim]


def map_examples(fn: Callable[[Mapping[str, tf.Tensor]], Mapping[str, tf.Tensor]]):
  """Wraps an example -> example function as a dataset preprocessor."""

  @functools.wraps(fn)
  def preprocessor(dataset: tf.data.Dataset) -> tf.data.Dataset:
    return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)

  return preprocessor
