"""seqio tasks and mixtures for mhr_jax; importing this package registers them.

Families (`python -m tasks` lists what is registered):
  synthetic             compositional string skills, generated in Python (the default)
  bigbench              BIG-bench JSON tasks, after `python -m tasks.bigbench prepare`
  t0                    T0 held-out tasks (RTE, CB, COPA, ...) from local TFDS data
  natural_instructions  Super-NaturalInstructions from a local clone ($MHR_JAX_NI_DIR)
  p3                    T0's training mixture (P3) from a local copy ($MHR_JAX_P3_DIR)

What training and evaluation call:
  get_batches(name, split, sequence_length, batch_size, shuffle, seed, ...)
  task_id_table(name)
  heldout_tasks(family), train_tasks(family), train_mixture(family)
  fewshot_task(task, k, seed) -> name of the k-shot training task
  eval_examples(task, split, max_examples), rank_classification_pairs(example)
  get_vocabulary(checkpoint_dir=None, kind='byte'), set_vocabulary(vocab)
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # pylint: disable=g-import-not-at-top

if os.path.exists("/dev/nvidiactl"):  # TF only feeds data: leave the GPUs to JAX.
  try:
    tf.config.set_visible_devices([], "GPU")
  except (RuntimeError, ValueError):  # TF already initialised its devices.
    pass

# pylint: disable=g-import-not-at-top,g-bad-import-order
from tasks import registry
from tasks.batches import feature_converter, get_batches, get_dataset
from tasks.examples import eval_examples, metric_names, rank_classification_pairs
from tasks.fewshot import fewshot_task, fewshot_task_name, register_fewshot_task
from tasks.mixtures import proportional_rates, register_mixture, temperature_rates
from tasks.registry import UnknownNameError, set_vocabulary, task_id_table
from tasks.synthetic import SyntheticSpec, register_synthetic
from tasks.vocab import get_vocabulary, train_sentencepiece
from tasks.defaults import register_defaults


def list_tasks(show_names: bool = True) -> str:
  """Registered families, their task counts and (optionally) every name."""
  return registry.describe(show_names)


def train_tasks(family: str = "synthetic") -> list[str]:
  return list(registry.family(family).train_tasks)


def heldout_tasks(family: str = "synthetic") -> list[str]:
  return list(registry.family(family).heldout_tasks)


def train_mixture(family: str = "synthetic") -> str:
  fam = registry.family(family)
  if not fam.train_mixture:
    raise ValueError(f"family {family!r} has no training mixture (held-out tasks only)")
  return fam.train_mixture


register_defaults()
