"""Registers the prepared BIG-bench JSON tasks as seqio tasks (`bigbench_<task>[.<subtask>]`).

Train / held-out tasks: a task (with all its subtasks) is held out iff
`tasks.splits.is_heldout(<task directory name>, 0.2)`, a fixed hash of the
name; with bigbench==1.0.0 that holds out 30 of the 167 JSON tasks (42 of the
1,001 registered tasks and subtasks, e.g. emoji_movie, unit_interpretation). The
42 programmatic BIG-bench tasks (a task.py, no task.json) are not covered.
The rest are training tasks, mixed in `bigbench_train` with rates proportional to
their training-split sizes capped at `cap`; that mixture reads the record store
through one input pipeline (`tasks.bigbench.mixture`). Examples are split per task
by `tasks.splits.split_examples` (hash-ordered 70/10/20 train/validation/test).
Metrics: accuracy (BIG-bench's multiple_choice_grade: rank classification,
crediting the predicted choice's target score) for multiple choice, exact match
and Rouge-L otherwise.
"""

from __future__ import annotations

import functools
import os
from typing import Optional

import seqio

from tasks import metrics
from tasks import mixtures, registry, sources, splits
from tasks.bigbench import store
from tasks.bigbench.fetch import INDEX, default_cache_dir
from tasks.bigbench.mixture import RecordStoreMixture, StoreTask
from tasks.bigbench.store import task_name

FAMILY = "bigbench"
TRAIN_MIXTURE = "bigbench_train"
# Keeps 77 % of training inputs and 92 % of targets whole (configs/experiments/bigbench.gin).
SEQUENCE_LENGTH = {"inputs": 1024, "targets": 64}


def available(cache_dir: Optional[str] = None) -> bool:
  return os.path.isfile(os.path.join(cache_dir or default_cache_dir(), INDEX))


def missing_data_message(cache_dir: Optional[str] = None) -> str:
  """One line: where BIG-bench was looked for and the command that prepares it."""
  return (f"BIG-bench is not prepared (no {INDEX} in {cache_dir or default_cache_dir()}): run "
          "`python -m tasks.bigbench prepare`, or set MHR_JAX_BIGBENCH_DIR to a prepared "
          "directory")


def read_index(cache_dir: Optional[str] = None) -> dict:
  return store.read_index(cache_dir or default_cache_dir())


def train_and_heldout(entries: list[dict], heldout_fraction: float = 0.2
                      ) -> tuple[list[dict], list[dict]]:
  """Index entries split into (training, held-out) tasks, each sorted by name."""
  entries = sorted(entries, key=lambda e: e["name"])
  heldout = [e for e in entries if splits.is_heldout(e["name"].split(".")[0], heldout_fraction)]
  return [e for e in entries if e not in heldout], heldout


def register_bigbench(cache_dir: Optional[str] = None,
                      vocabulary: Optional[seqio.Vocabulary] = None,
                      heldout_fraction: float = 0.2, cap: int = 3000) -> registry.Family:
  """Registers every task of the prepared cache (replacing an earlier registration)."""
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  entries = store.ensure_store(cache_dir)["tasks"]
  registry.remove_family(FAMILY)
  train, heldout = train_and_heldout(entries, heldout_fraction)
  for task_id, entry in enumerate(train + heldout):
    kind = entry["kind"]
    registry.add_task(registry.TaskSpec(
        name=task_name(entry["name"]), family=FAMILY,
        role="train" if task_id < len(train) else "heldout", kind=kind,
        source=sources.records_source(functools.partial(store.read_split, cache_dir, entry),
                                      kind),
        task_id=task_id,
        metric_fns=() if kind == sources.MULTIPLE_CHOICE else (metrics.generation_metrics,),
        metric_names=("accuracy",) if kind == sources.MULTIPLE_CHOICE
        else ("exact_match", "rouge_l")), vocabulary=vocabulary)
  fam = registry.Family(FAMILY, [task_name(e["name"]) for e in train],
                        [task_name(e["name"]) for e in heldout],
                        TRAIN_MIXTURE if train else None,
                        sequence_length=dict(SEQUENCE_LENGTH))
  registry.set_family(fam)
  if train:
    counts = {task_name(e["name"]): e["splits"]["train"] for e in train}
    catalog = {task_name(e["name"]): StoreTask(cache_dir, e["name"], e["splits"]["train"], i)
               for i, e in enumerate(train)}
    mixtures.register_mixture(TRAIN_MIXTURE, FAMILY, fam.train_tasks,
                              rates=mixtures.proportional_rates(counts, cap),
                              factory=functools.partial(RecordStoreMixture, catalog=catalog))
  return fam
