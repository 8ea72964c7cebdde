"""The stages' view of the data: thin calls into the `tasks` package."""

from __future__ import annotations

from typing import Iterator, Optional


import seqio

import tasks
from mhr_jax import partitioning
from mhr_jax.models import T5Config


def vocabulary(data, hf_checkpoint: Optional[str]):
  """The checkpoint's SentencePiece model if given, else `data.vocabulary` ('byte', ...)."""
  return tasks.get_vocabulary(checkpoint_dir=hf_checkpoint, kind=data.vocabulary)


def with_vocab_size(config: T5Config, vocab, hf_checkpoint: Optional[str]) -> T5Config:
  """A from-scratch model takes the vocabulary's size; a checkpoint keeps its own."""
  if hf_checkpoint:
    return config
  return config.replace(vocab_size=int(vocab.vocab_size))


def task_id_table(name: str) -> dict[str, int]:
  return dict(tasks.task_id_table(name))


def heldout_tasks(family: str) -> list[str]:
  return tasks.heldout_tasks(family)


def _lengths(data) -> dict:
  return {"inputs": data.input_length, "targets": data.target_length}


def train_batches(name: str, data, vocab, seed: int) -> Iterator[dict]:
  """Endless shuffled batches of a task or mixture; this host's shard only."""
  index, count = partitioning.process_shard_info()
  shard = seqio.ShardInfo(index=index, num_shards=count) if count > 1 else None
  per_host = data.batch_size // count
  return tasks.get_batches(name, "train", _lengths(data), per_host, shuffle=True, seed=seed,
                              vocabulary=vocab, shard_info=shard)


def truncation_report(name: str) -> Optional[list]:
  """Per task, the fractions of training inputs / targets the lengths cut, when the
  mixture's pipeline measured them (tasks.bigbench.mixture); else None."""
  return getattr(tasks.registry.provider(name), "last_truncation_report", None)


def fewshot_batches(task: str, k: int, seed: int, data, vocab,
                    sampling: Optional[str] = None) -> Iterator[dict]:
  """Endless batches of the k-shot split of `task` drawn with `seed`; task id 0."""
  name = tasks.fewshot_task(task, k, seed, sampling=sampling)
  batch = min(data.batch_size, k)
  return tasks.get_batches(name, "train", _lengths(data), batch, shuffle=True, seed=seed,
                              task_id=0, vocabulary=vocab)


def eval_examples(task: str, split: str, max_examples: Optional[int]) -> list[dict]:
  return tasks.eval_examples(task, split, max_examples)
