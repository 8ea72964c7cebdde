"""Model batches from a task or mixture: seqio EncDec conversion, unpacked, with task ids.

seqio's EncDecFeatureConverter refuses pass-through features when packing, and
its trim/pad step cannot slice a scalar; `TaskIdFeatureConverter` runs
unpacked and pads only the token features, so each example's scalar
`task_id` survives. Batches carry it as `task_ids [batch]` (DESIGN.md).
"""

from __future__ import annotations

from typing import Iterator, Mapping, Optional

import numpy as np
import seqio
import tensorflow as tf

from tasks import registry

FeatureSpec = seqio.FeatureConverter.FeatureSpec
MODEL_KEYS = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens",
              "decoder_loss_weights", "task_ids")


class TaskIdFeatureConverter(seqio.EncDecFeatureConverter):
  """Unpacked encoder-decoder conversion that passes the scalar `task_id` through.

  Decoder inputs are the targets shifted right with 0 (= pad) as start token.
  The per-example length assertions are off by default: Tasks already trim
  every feature to its sequence length, and the checks cost a third of the
  input pipeline's time.
  """

  def __init__(self, apply_length_check: bool = False, **kwargs):
    super().__init__(pack=False, apply_length_check=apply_length_check,
                     passthrough_features={"task_id": FeatureSpec(dtype=tf.int32, rank=0)},
                     **kwargs)

  def _pack_or_pad(self, ds, packed_lengths):
    # Only sequences are padded; the scalar task id has no length.
    return super()._pack_or_pad(ds, {k: v for k, v in packed_lengths.items() if k != "task_id"})


def feature_converter() -> TaskIdFeatureConverter:
  return TaskIdFeatureConverter()


def _sequence_length(name: str, sequence_length: Optional[Mapping[str, int]]) -> dict:
  lengths = dict(sequence_length or registry.default_sequence_length(name))
  missing = {"inputs", "targets"} - set(lengths)
  if missing:
    raise ValueError(f"sequence_length needs 'inputs' and 'targets', got {dict(lengths)}")
  return {"inputs": int(lengths["inputs"]), "targets": int(lengths["targets"])}


def get_dataset(name: str, split: str = "train",
                sequence_length: Optional[Mapping[str, int]] = None, *,
                shuffle: bool = True, seed: Optional[int] = 0,
                num_epochs: Optional[int] = None, task_id: Optional[int] = None,
                vocabulary: Optional[seqio.Vocabulary] = None,
                shard_info: Optional[seqio.ShardInfo] = None) -> tf.data.Dataset:
  """Unbatched tf.data of model features (see `get_batches`)."""
  if vocabulary is not None and vocabulary != registry.vocabulary_of(name):
    registry.set_vocabulary(vocabulary)
  lengths = _sequence_length(name, sequence_length)
  provider = registry.provider(name)
  kwargs = dict(sequence_length=lengths, split=split, shuffle=shuffle, seed=seed,
                num_epochs=num_epochs, shard_info=shard_info)
  if isinstance(provider, seqio.Mixture):
    kwargs["passthrough_features"] = ["task_id"]
  ds = provider.get_dataset(**kwargs)
  ds = feature_converter()(ds, {**lengths, "task_id": 1})

  def finish(ex):
    out = {k: ex[k] for k in MODEL_KEYS[:-1]}
    out["task_ids"] = (tf.constant(task_id, tf.int32) if task_id is not None
                       else ex["task_id"])
    return out

  return ds.map(finish, num_parallel_calls=tf.data.AUTOTUNE)


def get_batches(name: str, split: str = "train",
                sequence_length: Optional[Mapping[str, int]] = None,
                batch_size: int = 32, shuffle: bool = True, seed: Optional[int] = 0, *,
                num_epochs: Optional[int] = None, task_id: Optional[int] = None,
                drop_remainder: bool = True,
                vocabulary: Optional[seqio.Vocabulary] = None,
                shard_info: Optional[seqio.ShardInfo] = None) -> Iterator[dict[str, np.ndarray]]:
  """Numpy batches of a registered task or mixture.

  Args:
    name: task or mixture name (unknown names raise UnknownNameError).
    sequence_length: {'inputs': n, 'targets': m}; default: the family's.
    shuffle, seed: seeded shuffling (and mixture sampling) is deterministic.
    num_epochs: None repeats forever (training); 1 for one pass (evaluation).
    task_id: overrides every example's task id (e.g. 0 for few-shot adaptation).
    drop_remainder: drop the last partial batch.
    vocabulary: tokenize with this vocabulary; if it differs from the registered
      one, every task is re-registered with it (`registry.set_vocabulary`).
    shard_info: this host's shard (multi-host data parallelism; same seed on
      every host).
  Yields:
    dicts of int32 arrays: encoder_input_tokens [b, inputs],
    decoder_input_tokens / decoder_target_tokens / decoder_loss_weights
    [b, targets], task_ids [b].
  """
  ds = get_dataset(name, split, sequence_length, shuffle=shuffle, seed=seed,
                   num_epochs=num_epochs, task_id=task_id, vocabulary=vocabulary,
                   shard_info=shard_info)
  ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
  return ds.as_numpy_iterator()
