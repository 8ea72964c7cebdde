"""Registers the prepared BIG-bench JSON tasks as seqio tasks (`bigbench_<task>[.<subtask>]`).

Train / held-out tasks: a task (with all its subtasks) is held out iff
`tasks.splits.is_heldout(<task directory name>, 0.2)`, a fixed hash of the
name (about 20% of tasks); the rest are training tasks, mixed in
`bigbench_train` with rates proportional to their example counts capped at
`cap`. Examples are split per task by `tasks.splits.split_examples`
(hash-ordered 70/10/20 train/validation/test). Metrics: accuracy (rank
classification) for multiple choice, exact match and Rouge-L otherwise.
"""

from __future__ import annotations

import functools
import json
import os
import re
from typing import Optional

import seqio

from mhr_jax import errors
from mhr_jax.evaluation import metrics
from tasks import mixtures, registry, sources, splits
from tasks.bigbench.parse import parse_task
from tasks.bigbench.fetch import INDEX, default_cache_dir

FAMILY = "bigbench"
TRAIN_MIXTURE = "bigbench_train"


def task_name(index_name: str) -> str:
  return "bigbench_" + re.sub(r"[^\w.]", "_", index_name)


def available(cache_dir: Optional[str] = None) -> bool:
  return os.path.isfile(os.path.join(cache_dir or default_cache_dir(), INDEX))


def read_index(cache_dir: Optional[str] = None) -> dict:
  cache_dir = cache_dir or default_cache_dir()
  path = os.path.join(cache_dir, INDEX)
  if not os.path.isfile(path):
    raise errors.MissingInputError(
        f"no BIG-bench cache at {cache_dir!r} (missing {INDEX}); run "
        "`python -m tasks.bigbench prepare --cache_dir DIR` or set "
        "$MHR_JAX_BIGBENCH_DIR")
  with open(path) as f:
    return json.load(f)


@functools.lru_cache(maxsize=32)
def load_splits(cache_dir: str, rel_path: str, name: str) -> dict[str, list]:
  with open(os.path.join(cache_dir, "tasks", rel_path, "task.json"), encoding="utf-8") as f:
    _, records = parse_task(json.load(f))
  return splits.split_examples(name, records)


def _load_split(cache_dir: str, rel_path: str, name: str, split: str) -> list[dict]:
  return load_splits(cache_dir, rel_path, name)[split]


def register_bigbench(cache_dir: Optional[str] = None,
                      vocabulary: Optional[seqio.Vocabulary] = None,
                      heldout_fraction: float = 0.2, cap: int = 3000) -> registry.Family:
  """Registers every task of the prepared cache (replacing an earlier registration)."""
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  entries = read_index(cache_dir)["tasks"]
  registry.remove_family(FAMILY)
  entries = sorted(entries, key=lambda e: e["name"])
  heldout = [e for e in entries if splits.is_heldout(e["name"].split(".")[0], heldout_fraction)]
  train = [e for e in entries if e not in heldout]
  for task_id, entry in enumerate(train + heldout):
    name = task_name(entry["name"])
    kind = entry["kind"]
    registry.add_task(registry.TaskSpec(
        name=name, family=FAMILY, role="train" if task_id < len(train) else "heldout",
        kind=kind,
        source=sources.records_source(
            functools.partial(_load_split, cache_dir, entry["path"], name), kind),
        task_id=task_id,
        metric_fns=() if kind == sources.MULTIPLE_CHOICE else (metrics.generation_metrics,),
        metric_names=("accuracy",) if kind == sources.MULTIPLE_CHOICE
        else ("exact_match", "rouge_l")), vocabulary=vocabulary)
  fam = registry.Family(FAMILY, [task_name(e["name"]) for e in train],
                        [task_name(e["name"]) for e in heldout],
                        TRAIN_MIXTURE if train else None,
                        sequence_length={"inputs": 512, "targets": 64})
  registry.set_family(fam)
  if train:
    counts = {task_name(e["name"]): e["n_examples"] for e in train}
    mixtures.register_mixture(TRAIN_MIXTURE, FAMILY, fam.train_tasks,
                              rates=mixtures.proportional_rates(counts, cap))
  return fam
