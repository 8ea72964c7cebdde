"""The BIG-bench training mixture as one input pipeline, and its truncation report.

seqio's `Mixture.get_dataset` builds one pipeline per task (source, task id,
tokenize, EOS: five traced `tf.data` map functions each) and samples among
them; at 959 tasks tracing alone took ~80 s. `RecordStoreMixture` keeps the
mixture's declaration (its tasks, rates, output features: everything seqio reads)
but, for endless shuffled training data, samples in Python from the record
store (`tasks.bigbench.store`) and tokenizes once, after sampling:

  numpy sampler (task ~ rates, then the next record of that task's seeded shuffle,
  reshuffled every epoch) -> from_generator -> tokenize -> trim + EOS

Any other request (another split, `num_epochs`, no shuffling) falls back to
seqio's per-task pipeline. The stream depends only on the seed and the store.

At build time it logs how many training inputs and targets the sequence
lengths cut, per task (`truncation_report`), warning about the tasks above
`WARN_FRACTION`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Iterator, Optional, Sequence

import numpy as np
import seqio
import tensorflow as tf

from tasks.bigbench import store

log = logging.getLogger(__name__)

WARN_FRACTION = 0.1  # tasks cutting more than this fraction of inputs or targets are listed
_CHUNK = 512  # records drawn per generator step (grouped by task for reading)
_SAMPLE = 32  # records tokenized per task to estimate truncation with a non-byte vocabulary


@dataclasses.dataclass(frozen=True)
class StoreTask:
  """Where a training task's records live and which routing row they train."""
  cache_dir: str
  name: str  # the index name, e.g. 'multiemo.all_sentence_en'
  n_train: int
  task_id: int


def _load_tables(stores: Sequence[StoreTask]) -> list[np.ndarray]:
  # Read whole (a few MB in all): memory-mapping 1,000 files would hold 1,000 descriptors.
  return [np.array(store.offsets(s.cache_dir, s.name)[:s.n_train]) for s in stores]


def sample_records(stores: Sequence[StoreTask], probs: np.ndarray, seed: Optional[int],
                   tables: Optional[Sequence[np.ndarray]] = None,
                   chunk: int = _CHUNK) -> Iterator[dict]:
  """Endless chunks {'inputs', 'targets': str [chunk], 'task_id': int32 [chunk]}.

  Each example's task is drawn with `probs`; within a task, records come in a
  seeded random order, reshuffled at every pass.
  """
  rng = np.random.default_rng(seed)
  tables = _load_tables(stores) if tables is None else tables
  task_ids = np.asarray([s.task_id for s in stores], np.int32)
  orders: list[Optional[np.ndarray]] = [None] * len(stores)
  position = np.zeros(len(stores), np.int64)
  while True:
    picks = rng.choice(len(stores), size=chunk, p=probs)
    inputs, targets = [None] * chunk, [None] * chunk
    by_task = np.argsort(picks, kind="stable")
    bounds = np.flatnonzero(np.diff(picks[by_task])) + 1
    for group in np.split(by_task, bounds):
      t = int(picks[group[0]])
      s = stores[t]
      with open(os.path.join(s.cache_dir, store.RECORDS, s.name + ".jsonl"), "rb") as f:
        for j in group:
          if orders[t] is None or position[t] == s.n_train:
            orders[t], position[t] = rng.permutation(s.n_train), 0
          row = tables[t][orders[t][position[t]]]
          position[t] += 1
          f.seek(int(row[0]))
          record = json.loads(f.read(int(row[1] - row[0])))
          inputs[j], targets[j] = record["inputs"], record["targets"]
    yield {"inputs": np.asarray(inputs, object), "targets": np.asarray(targets, object),
           "task_id": task_ids[picks]}


def _is_byte_vocabulary(vocabulary) -> bool:
  return isinstance(vocabulary, seqio.ByteVocabulary)


def truncation_report(stores: Sequence[StoreTask], sequence_length: dict,
                      vocabulary=None, tables: Optional[Sequence[np.ndarray]] = None
                      ) -> list[dict]:
  """Per task: the fractions of its training inputs / targets longer than the lengths allow.

  A feature of n tokens loses tokens when n > length - 1 (one position is EOS). Exact
  for the byte vocabulary (tokens = UTF-8 bytes, stored); otherwise estimated by
  tokenizing up to `_SAMPLE` records per task ('sampled': their number).
  """
  tables = _load_tables(stores) if tables is None else tables
  out = []
  for s, table in zip(stores, tables):
    row = {"task": store.task_name(s.name), "n_train": s.n_train}
    if vocabulary is None or _is_byte_vocabulary(vocabulary):
      lengths = table[:, 2:4]
    else:
      n = min(s.n_train, _SAMPLE)
      picked = np.linspace(0, s.n_train - 1, n).astype(int) if n else []
      records = [store.read_records(s.cache_dir, s.name, int(i), int(i) + 1, table)[0]
                 for i in picked]
      lengths = np.asarray([[len(vocabulary.encode(r["inputs"])),
                             len(vocabulary.encode(r["targets"]))] for r in records],
                           np.int64).reshape(-1, 2)
      row["sampled"] = len(records)
    for k, key in enumerate(("inputs", "targets")):
      row[key] = float(np.mean(lengths[:, k] > sequence_length[key] - 1)) if len(lengths) else 0.0
    out.append(row)
  return out


def describe_truncation(report: Sequence[dict], sequence_length: dict, weights: np.ndarray,
                        name: str, threshold: float = WARN_FRACTION, shown: int = 10
                        ) -> tuple[str, list[dict]]:
  """(one summary paragraph, the tasks above `threshold`) for a truncation report."""
  cut_in = float(np.dot(weights, [r["inputs"] for r in report]))
  cut_tg = float(np.dot(weights, [r["targets"] for r in report]))
  bad = sorted((r for r in report if max(r["inputs"], r["targets"]) > threshold),
               key=lambda r: -max(r["inputs"], r["targets"]))
  text = (f"{name} at inputs={sequence_length['inputs']}, targets={sequence_length['targets']}: "
          f"{100 * cut_in:.1f}% of training inputs and {100 * cut_tg:.1f}% of targets are cut "
          f"(weighted by mixing rate); {len(bad)} of {len(report)} tasks cut more than {100 * threshold:.0f}%")
  if bad and shown:
    worst = ", ".join(f"{r['task']} ({100 * r['inputs']:.0f}% / {100 * r['targets']:.0f}%)"
                      for r in bad[:shown])
    more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
    text += (f": {worst}{more}. All tasks: `python -m tasks.bigbench lengths "
             f"--input_length {sequence_length['inputs']} "
             f"--target_length {sequence_length['targets']}`")
  return text, bad


class RecordStoreMixture(seqio.Mixture):
  """A seqio Mixture over store-backed tasks whose training stream is one pipeline."""

  def __init__(self, name: str, tasks, *, catalog: dict, **kwargs):
    super().__init__(name, tasks, **kwargs)
    self._catalog = catalog

  def get_dataset(self, sequence_length=None, split="train", use_cached=False, shuffle=True,
                  seed=None, shard_info=None, num_epochs=None, copy_pretokenized=False,
                  compute_stats_empirically=False, log_mixing_proportions=True,
                  passthrough_features=None, trim_output_features=True,
                  try_in_mem_cache=True) -> tf.data.Dataset:
    if split != "train" or num_epochs is not None or use_cached or not shuffle:
      return super().get_dataset(
          sequence_length, split, use_cached, shuffle, seed, shard_info, num_epochs,
          copy_pretokenized, compute_stats_empirically, log_mixing_proportions,
          passthrough_features, trim_output_features, try_in_mem_cache)
    rates = {t.name: float(self.get_rate(t)) for t in self.tasks}
    stores = [self._catalog[n] for n in rates if rates[n] > 0 and self._catalog[n].n_train > 0]
    if not stores:
      raise ValueError(f"mixture {self.name!r}: no task has training examples and a rate > 0")
    weights = np.asarray([rates[store.task_name(s.name)] for s in stores], np.float64)
    probs = weights / weights.sum()
    tables = _load_tables(stores)
    vocab = self.output_features["inputs"].vocabulary
    if sequence_length:
      report = truncation_report(stores, sequence_length, vocab, tables)
      text, bad = describe_truncation(report, sequence_length, probs, self.name)
      (log.warning if bad else log.info)("%s", text)
      self.last_truncation_report = report

    signature = {"inputs": tf.TensorSpec([None], tf.string),
                 "targets": tf.TensorSpec([None], tf.string),
                 "task_id": tf.TensorSpec([None], tf.int32)}
    ds = tf.data.Dataset.from_generator(
        lambda: sample_records(stores, probs, seed, tables), output_signature=signature)
    ds = ds.unbatch()
    if shard_info and shard_info.num_shards > 1:
      ds = ds.shard(shard_info.num_shards, shard_info.index)
    features = self.output_features
    ds = seqio.preprocessors.tokenize(ds, features, copy_pretokenized=copy_pretokenized)
    ds = seqio.preprocessors.append_eos_after_trim(
        ds, output_features=features,
        sequence_length=sequence_length if trim_output_features else None)
    keys = set(features) | {"task_id"} | set(passthrough_features or ())
    if copy_pretokenized:
      keys |= {f + "_pretokenized" for f in features}
    return ds.map(lambda ex: {k: v for k, v in ex.items() if k in keys},
                  num_parallel_calls=tf.data.AUTOTUNE)
