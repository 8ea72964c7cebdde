"""Formatted example records in Python and as tf.data: the schema every task produces.

Every task's formatting step (before tokenization) yields examples with

  generative:       inputs (str), targets (str), answers (list[str], all valid targets)
  multiple choice:  inputs (str), targets (str, the correct choice),
                    choices (list[str]), label (int32, index of the correct choice),
                    optionally choice_scores (list[float], each choice's credit when
                    predicted, e.g. BIG-bench's target_scores; default: 1 for the label)

so few-shot subsets, evaluation and rank classification treat every family alike.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

GENERATIVE = "generative"
MULTIPLE_CHOICE = "multiple_choice"
KINDS = (GENERATIVE, MULTIPLE_CHOICE)

_LIST_FIELDS = {GENERATIVE: ("answers",), MULTIPLE_CHOICE: ("choices",)}


def check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f"unknown example kind {kind!r}; valid kinds: {list(KINDS)}")


def generative_record(inputs: str, targets: Sequence[str]) -> dict:
  """A generative record; the first target is the training target."""
  targets = [str(t) for t in targets]
  if not targets:
    raise ValueError(f"generative example without targets: inputs={inputs[:80]!r}")
  return {"inputs": inputs, "targets": targets[0], "answers": targets}


def multiple_choice_record(inputs: str, choices: Sequence[str], label: int) -> dict:
  """A multiple-choice record; the target is the correct choice."""
  choices = [str(c) for c in choices]
  if not 0 <= label < len(choices):
    raise ValueError(f"label {label} out of range for {len(choices)} choices: {choices}")
  return {"inputs": inputs, "targets": choices[label], "choices": choices, "label": int(label)}


def records_dataset(records: Sequence[Mapping], kind: str) -> tf.data.Dataset:
  """Python records (schema above) -> tf.data.Dataset of string/int32 features."""
  check_kind(kind)
  columns = {
      "inputs": tf.constant([r["inputs"] for r in records], tf.string, shape=[len(records)]),
      "targets": tf.constant([r["targets"] for r in records], tf.string, shape=[len(records)]),
  }
  for field in _LIST_FIELDS[kind]:
    columns[field] = tf.RaggedTensor.from_row_lengths(
        tf.constant([x for r in records for x in r[field]], tf.string),
        tf.constant([len(r[field]) for r in records], tf.int64))
  if kind == MULTIPLE_CHOICE:
    columns["label"] = tf.constant([r["label"] for r in records], tf.int32, shape=[len(records)])
    if records and all("choice_scores" in r for r in records):
      columns["choice_scores"] = tf.RaggedTensor.from_row_lengths(
          tf.constant([x for r in records for x in r["choice_scores"]], tf.float32),
          tf.constant([len(r["choice_scores"]) for r in records], tf.int64))
  return tf.data.Dataset.from_tensor_slices(columns)


class RecordsDataSource(seqio.FunctionDataSource):
  """A seqio data source over in-memory records, loaded lazily per split.

  It shuffles the raw records itself (seeded, a new order each epoch), which
  costs nothing next to filling a shuffle buffer with tokenized examples:
  tasks over it are registered without a Task-level shuffle buffer, so a
  mixture of many tasks yields its first batch at once.
  """

  def __init__(self, load_split: Callable[[str], Sequence[Mapping]], kind: str,
               splits: Sequence[str] = ("train", "validation", "test")):
    check_kind(kind)
    self._load_split = load_split
    self._kind = kind

    def dataset_fn(split: str, shuffle_files: bool, seed: Optional[int] = None):
      del shuffle_files, seed  # get_dataset below shuffles.
      return records_dataset(self._load_split(split), self._kind)

    super().__init__(dataset_fn, splits=tuple(splits))
    self._performs_internal_shuffling = True

  def get_dataset(self, split: str = "train", shuffle: bool = True, seed: Optional[int] = None,
                  shard_info=None, **kwargs) -> tf.data.Dataset:
    del kwargs  # sequence_length, use_cached, num_epochs: unused, as in FunctionDataSource.
    if shard_info and shard_info.num_shards > 1:
      raise ValueError("in-memory record sources do not shard; use tf.data.Dataset.shard")
    records = self._load_split(split)
    ds = records_dataset(records, self._kind)
    if shuffle:
      ds = ds.shuffle(max(len(records), 1), seed=seed, reshuffle_each_iteration=True)
    return ds


def records_source(load_split: Callable[[str], Sequence[Mapping]], kind: str,
                   splits: Sequence[str] = ("train", "validation", "test")) -> RecordsDataSource:
  """A seqio data source over in-memory records; `load_split(split)` is called lazily."""
  return RecordsDataSource(load_split, kind, splits)


def _to_str(x) -> str:
  return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def numpy_to_record(example: Mapping) -> dict:
  """One example from `as_numpy_iterator()` -> a Python record (bytes decoded)."""
  out = {}
  for key, value in example.items():
    if isinstance(value, (bytes, str)):
      out[key] = _to_str(value)
    elif isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
      out[key] = [_to_str(v) for v in value.tolist()]
    elif isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.ndim == 1:
      out[key] = value.tolist()
    elif isinstance(value, np.ndarray) and value.ndim == 0:
      out[key] = value.item()
    elif isinstance(value, np.generic):
      out[key] = value.item()
    else:
      out[key] = value
  return out
