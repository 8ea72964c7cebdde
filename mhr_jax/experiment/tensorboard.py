"""TensorBoard scalars of the stages' training runs, written with `tf.summary`.

TensorFlow is already in every process that runs a stage (seqio's input
pipeline), so writing through it costs no import, as t5x and clu do.
(tensorboardX, used before, imports torch whenever torch is installed: ~2.5
CPU-s at every start of `run.py` on a machine that has it.)

    writer = ScalarWriter(os.path.join(stage_dir, "tensorboard"))
    writer.add_scalar("multitask/mhr/loss", 2.31, step=10)   # what train_loop calls
    writer.flush()                                            # train_loop, when it ends
    read_scalars(os.path.join(stage_dir, "tensorboard"))
    # {"multitask/mhr/loss": [(10, 2.31)], ...}
"""

from __future__ import annotations

import glob
import os

import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tensorflow.core.util import event_pb2

# What TensorBoard's scalars dashboard reads (its own `tensorboard.summary.scalar`
# writes the same; that package is not a dependency here, tf.summary.write is TF's).
_SCALAR = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
    data_class=summary_pb2.DATA_CLASS_SCALAR).SerializeToString()


class ScalarWriter:
  """One TensorBoard run directory; `add_scalar(tag, value, step)` as tensorboardX's."""

  def __init__(self, logdir: str):
    self._writer = tf.summary.create_file_writer(logdir)

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    with self._writer.as_default():
      tf.summary.write(tag, tf.constant(float(value), tf.float32), step=int(step),
                       metadata=_SCALAR)

  def flush(self) -> None:
    self._writer.flush()


def read_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """{tag: [(step, value), ...]} of every event file in `logdir`, in the order written."""
  scalars: dict[str, list[tuple[int, float]]] = {}
  for path in sorted(glob.glob(os.path.join(logdir, "events.out.tfevents.*"))):
    for record in tf.data.TFRecordDataset(path):
      event = event_pb2.Event.FromString(record.numpy())
      for value in event.summary.value:
        scalars.setdefault(value.tag, []).append(
            (int(event.step), float(tf.make_ndarray(value.tensor))))
  return scalars
