"""T0's multi-task training mixture (P3, bigscience/P3) from a local copy.

Expected layout (`data_dir`, default $MHR_JAX_P3_DIR or ~/.cache/mhr_jax/P3), as
the P3 repository ships it (seqio's cached-task format), one directory per
prompted dataset:

  data/<dataset>_<prompt>/train.tfrecord-00000-of-00001   tf.Example records
  data/<dataset>_<prompt>/validation.tfrecord-*           (where present)
  data/<dataset>_<prompt>/stats.train.json                {"examples": N, ...} (optional)

Each record's `inputs_pretokenized` and `targets_pretokenized` strings are
used (and tokenized with our vocabulary); the pre-tokenized id features are
ignored. Only the directories of T0's 38 training dataset(-subset)s
(`T0_TRAIN_DATASETS`) are read; `*_score_eval` variants, T0+/T0++ additions
and the held-out evaluation datasets are skipped.

Tasks: one per prompt (`granularity='prompt'`, the default: one routing row
per (dataset, subset, template), as microsoft/mttl's `use_t0_templates_as_tasks`
that the paper's T0 runs set, 313 tasks there) or one per dataset
(`granularity='dataset'`: all its prompts feed one task and one routing row).
Names: `p3_<prompt directory>` / `p3_<dataset>`. Prompts mttl leaves out
(`BLACKLIST`, its TASK_BLACKLIST entries among T0's training prompts) are skipped.
Mixture `p3_train`: examples-proportional, counted from `stats.train.json`
where present, else by reading the files on first use; capped as T0 / mttl
cap them: a dataset's examples at `cap` (500,000), i.e. each of its T
prompts at cap // T (mttl t0_dataset_readers.py `MAX_EXAMPLES_PER_DATASET //
num_templates`); with `granularity='dataset'`, each dataset task at `cap`.
"""

from __future__ import annotations

import functools
import glob
import json
import os
from typing import Optional

import seqio
import tensorflow as tf

from mhr_jax import errors
from tasks import metrics
from tasks import mixtures, preprocessors, registry, sources

FAMILY = "p3"
TRAIN_MIXTURE = "p3_train"
GRANULARITIES = ("prompt", "dataset")
# mttl's TASK_BLACKLIST (dataloader/t0_dataset_readers.py) entries that are T0
# training prompts ("Tasks with broken cached files"); the others are not T0 training sets.
BLACKLIST = ("gigaword_summarize_",)

# T0's training datasets (Sanh et al. 2022, Fig. 2) as P3 names their directories.
T0_TRAIN_DATASETS = (
    "adversarial_qa_dbert", "adversarial_qa_dbidaf", "adversarial_qa_droberta", "ag_news",
    "amazon_polarity", "app_reviews", "cnn_dailymail_3.0.0", "common_gen", "cos_e_v1.11",
    "cosmos_qa", "dbpedia_14", "dream", "duorc_ParaphraseRC", "duorc_SelfRC", "gigaword",
    "glue_mrpc", "glue_qqp", "imdb", "kilt_tasks_hotpotqa", "multi_news", "paws_labeled_final",
    "qasc", "quail", "quarel", "quartz", "quoref", "ropes", "rotten_tomatoes", "samsum", "sciq",
    "social_i_qa", "trec", "wiki_bio", "wiki_hop_original", "wiki_qa", "wiqa", "xsum",
    "yelp_review_full",
)
_FEATURES = {"inputs_pretokenized": tf.io.FixedLenFeature([], tf.string),
             "targets_pretokenized": tf.io.FixedLenFeature([], tf.string)}
_SPLITS = ("train", "validation", "test")


def default_dir() -> str:
  return os.path.expanduser(os.environ.get(
      "MHR_JAX_P3_DIR", os.path.join("~", ".cache", "mhr_jax", "P3")))


def available(data_dir: Optional[str] = None) -> bool:
  return bool(scan(data_dir or default_dir()))


def dataset_of(prompt_dir: str) -> Optional[str]:
  """The T0 training dataset a P3 directory name belongs to, or None (not a training set)."""
  if prompt_dir.endswith("_score_eval"):
    return None
  matches = [d for d in T0_TRAIN_DATASETS if prompt_dir.startswith(d + "_")]
  return max(matches, key=len) if matches else None


def scan(data_dir: str) -> dict[str, list[str]]:
  """{T0 training dataset: [its prompt directories with a train split]} under data_dir/data."""
  root = os.path.join(data_dir, "data")
  if not os.path.isdir(root):
    return {}
  found: dict[str, list[str]] = {}
  for name in sorted(os.listdir(root)):
    dataset = dataset_of(name)
    if name in BLACKLIST:
      continue
    if dataset and glob.glob(os.path.join(root, name, "train.tfrecord-*")):
      found.setdefault(dataset, []).append(os.path.join(root, name))
  return found


def _patterns(prompt_dirs: list[str], split: str) -> list[str]:
  return [os.path.join(d, f"{split}.tfrecord-*") for d in prompt_dirs
          if glob.glob(os.path.join(d, f"{split}.tfrecord-*"))]


def count_examples(prompt_dirs: tuple[str, ...], split: str = "train") -> int:
  """Examples of a split over prompt directories: stats.<split>.json, else counted."""
  total = 0
  for d in prompt_dirs:
    stats = os.path.join(d, f"stats.{split}.json")
    if os.path.isfile(stats):
      with open(stats, encoding="utf-8") as f:
        total += int(json.load(f)["examples"])
    else:
      files = sorted(glob.glob(os.path.join(d, f"{split}.tfrecord-*")))
      total += int(tf.data.TFRecordDataset(files).reduce(0, lambda n, _: n + 1)) if files else 0
  return total


def _format(ex):
  inputs = tf.strings.strip(ex["inputs_pretokenized"])
  targets = tf.strings.strip(ex["targets_pretokenized"])
  return {"inputs": inputs, "targets": targets, "answers": tf.reshape(targets, [1])}


def task_name(unit: str) -> str:
  return "p3_" + unit


def register_p3(data_dir: Optional[str] = None, vocabulary: Optional[seqio.Vocabulary] = None,
                granularity: str = "prompt", cap: Optional[int] = 500_000) -> registry.Family:
  """Registers the P3 training tasks found under `data_dir` and the `p3_train` mixture."""
  if granularity not in GRANULARITIES:
    raise ValueError(f"granularity={granularity!r} is not supported; valid choices: "
                     f"{list(GRANULARITIES)}")
  data_dir = os.path.abspath(os.path.expanduser(data_dir or default_dir()))
  found = scan(data_dir)
  if not found:
    raise errors.MissingInputError(
        f"no P3 training data under {data_dir!r} (need data/<dataset>_<prompt>/"
        f"train.tfrecord-* for one of T0's training datasets, e.g. {T0_TRAIN_DATASETS[0]}); "
        "pass data_dir or set $MHR_JAX_P3_DIR")
  if granularity == "dataset":
    units = {dataset: tuple(dirs) for dataset, dirs in found.items()}
    unit_caps = {dataset: cap for dataset in found}
  else:
    units = {os.path.basename(d): (d,) for dirs in found.values() for d in dirs}
    unit_caps = {os.path.basename(d): (None if cap is None else cap // len(dirs))
                 for dirs in found.values() for d in dirs}
  registry.remove_family(FAMILY)
  names, counts, caps = [], {}, {}
  for task_id, (unit, dirs) in enumerate(sorted(units.items())):
    split_files = {s: _patterns(list(dirs), s) for s in _SPLITS}
    name = task_name(unit)
    registry.add_task(registry.TaskSpec(
        name=name, family=FAMILY, role="train", kind=sources.GENERATIVE,
        source=seqio.TFExampleDataSource({s: p for s, p in split_files.items() if p},
                                         feature_description=_FEATURES),
        format_preprocessors=(preprocessors.map_examples(_format),), task_id=task_id,
        metric_fns=(metrics.generation_metrics,), metric_names=("exact_match", "rouge_l")),
        vocabulary=vocabulary)
    names.append(name)
    counts[name] = functools.partial(count_examples, dirs)
    caps[name] = unit_caps[unit]
  fam = registry.Family(FAMILY, names, [], TRAIN_MIXTURE,
                        sequence_length={"inputs": 256, "targets": 64})
  registry.set_family(fam)
  registry.add_mixture(TRAIN_MIXTURE, FAMILY, [
      (n, mixtures.lazy_rate(lambda name: counts[name](), cap=caps[n])) for n in names])
  return fam
