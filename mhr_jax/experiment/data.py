"""The stages' view of the data: thin calls into the `tasks` package."""

from __future__ import annotations

import itertools
from typing import Iterator, Optional

import numpy as np

from mhr_jax import partitioning
from mhr_jax.models import T5Config


def _tasks():
  import tasks  # pylint: disable=g-import-not-at-top  (imports TF; keep it lazy)
  return tasks


def vocabulary(data, hf_checkpoint: Optional[str]):
  """The checkpoint's SentencePiece model if given, else `data.vocabulary` ('byte', ...)."""
  return _tasks().get_vocabulary(checkpoint_dir=hf_checkpoint, kind=data.vocabulary)


def with_vocab_size(config: T5Config, vocab, hf_checkpoint: Optional[str]) -> T5Config:
  """A from-scratch model takes the vocabulary's size; a checkpoint keeps its own."""
  if hf_checkpoint:
    return config
  return config.replace(vocab_size=int(vocab.vocab_size))


def task_id_table(name: str) -> dict[str, int]:
  return dict(_tasks().task_id_table(name))


def heldout_tasks(family: str) -> list[str]:
  return _tasks().heldout_tasks(family)


def _lengths(data) -> dict:
  return {"inputs": data.input_length, "targets": data.target_length}


def train_batches(name: str, data, vocab, seed: int) -> Iterator[dict]:
  """Endless shuffled batches of a task or mixture; this host's shard only."""
  import seqio  # pylint: disable=g-import-not-at-top
  index, count = partitioning.process_shard_info()
  shard = seqio.ShardInfo(index=index, num_shards=count) if count > 1 else None
  per_host = data.batch_size // count
  return _tasks().get_batches(name, "train", _lengths(data), per_host, shuffle=True, seed=seed,
                              vocabulary=vocab, shard_info=shard)


def fewshot_batches(task: str, k: int, seed: int, data, vocab,
                    sampling: Optional[str] = None) -> Iterator[dict]:
  """Endless batches of the k-shot split of `task` drawn with `seed`; task id 0."""
  name = _tasks().fewshot_task(task, k, seed, sampling=sampling)
  batch = min(data.batch_size, k)
  return _tasks().get_batches(name, "train", _lengths(data), batch, shuffle=True, seed=seed,
                              task_id=0, vocabulary=vocab)


def eval_examples(task: str, split: str, max_examples: Optional[int]) -> list[dict]:
  return _tasks().eval_examples(task, split, max_examples)


def skip(batches: Iterator[dict], n: int) -> Iterator[dict]:
  """Advances a deterministic batch stream by n batches (the resume position)."""
  return itertools.islice(batches, n, None)
