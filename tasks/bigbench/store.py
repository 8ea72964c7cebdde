"""The parsed-record store: every BIG-bench task parsed once, read without parsing JSON tasks.

Parsing BIG-bench's 1.7 GB of task JSON takes about a minute, so `build_store` (run by
`prepare`, or once by `register_bigbench` on a cache from an older prepare) writes

  DIR/records/<name>.jsonl   the task's formatted records (`tasks.sources` schema, plus
                             `choice_scores` for multiple choice), one JSON object per
                             line, in split order: train, then validation, then test
  DIR/records/<name>.npy     int64 [n, 4]: byte offset of each line's start and end in the
                             .jsonl, UTF-8 byte lengths of its inputs and of its target

and records per task in DIR/index.json: kind, n_examples, the split sizes, the duplicates
dropped and the examples skipped. Reading a split reads one byte range; the training
mixture (`tasks.bigbench.mixture`) reads single records by offset, so nothing but the
offset tables is held in memory. `STORE_VERSION` changes whenever parsing or splitting
does, and an index with another version is rebuilt.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from typing import Optional

import numpy as np

from mhr_jax import errors
from tasks import splits
from tasks.bigbench.parse import parse_examples

log = logging.getLogger(__name__)

STORE_VERSION = 2
INDEX = "index.json"
RECORDS = "records"
SPLITS = splits.SPLITS  # train, validation, test: the order of records in a .jsonl


def task_name(index_name: str) -> str:
  """Our seqio task name of a BIG-bench task or subtask ('parent.subtask')."""
  return "bigbench_" + re.sub(r"[^\w.]", "_", index_name)


def _task_files(cache_dir: str) -> list[tuple[str, str]]:
  root = os.path.join(cache_dir, "tasks")
  paths = sorted(glob.glob(os.path.join(root, "*", "task.json")) +
                 glob.glob(os.path.join(root, "*", "*", "task.json")))
  return [(os.path.relpath(os.path.dirname(p), root).replace(os.sep, "/"), p) for p in paths]


def _write_task(out_dir: str, name: str, records: list[dict]) -> dict[str, int]:
  """Writes <name>.jsonl and <name>.npy in split order; returns the split sizes."""
  by_split = splits.split_examples(task_name(name), records)
  rows, offset = [], 0
  with open(os.path.join(out_dir, name + ".jsonl"), "wb") as f:
    for split in SPLITS:
      for r in by_split[split]:
        line = json.dumps(r, ensure_ascii=False).encode("utf-8") + b"\n"
        f.write(line)
        rows.append((offset, offset + len(line), len(r["inputs"].encode("utf-8")),
                     len(r["targets"].encode("utf-8"))))
        offset += len(line)
  np.save(os.path.join(out_dir, name + ".npy"), np.asarray(rows, np.int64).reshape(-1, 4))
  return {s: len(by_split[s]) for s in SPLITS}


def build_store(cache_dir: str) -> dict:
  """Parses every task.json under cache_dir/tasks into the store; writes and returns the index."""
  out_dir = os.path.join(cache_dir, RECORDS)
  os.makedirs(out_dir, exist_ok=True)
  entries = []
  for rel, path in _task_files(cache_dir):
    with open(path, encoding="utf-8") as f:
      kind, records, counts = parse_examples(json.load(f))
    if not records:
      continue
    name = rel.replace("/", ".")
    sizes = _write_task(out_dir, name, records)
    entries.append({"name": name, "path": rel, "kind": kind, "n_examples": len(records),
                    "splits": sizes, "duplicates": counts["duplicates"],
                    "skipped": counts["skipped"]})
  from tasks.bigbench.fetch import VERSION  # pylint: disable=g-import-not-at-top
  index = {"source": f"bigbench=={VERSION}", "store_version": STORE_VERSION,
           "tasks": entries}
  tmp = os.path.join(cache_dir, INDEX + ".tmp")
  with open(tmp, "w") as f:
    json.dump(index, f, indent=1)
  os.replace(tmp, os.path.join(cache_dir, INDEX))
  return index


def read_index(cache_dir: str) -> dict:
  path = os.path.join(cache_dir, INDEX)
  if not os.path.isfile(path):
    raise errors.MissingInputError(
        f"no BIG-bench data at {cache_dir!r} (missing {INDEX}): run `python -m tasks.bigbench "
        "prepare` (add --cache_dir DIR and set MHR_JAX_BIGBENCH_DIR=DIR for another place)")
  with open(path) as f:
    return json.load(f)


def ensure_store(cache_dir: str) -> dict:
  """The index, after building the store once if it is missing or from another version."""
  index = read_index(cache_dir)
  if index.get("store_version") != STORE_VERSION:
    log.warning("BIG-bench: parsing %s once into its record store (about a minute)...",
                cache_dir)
    index = build_store(cache_dir)
  return index


def offsets(cache_dir: str, name: str) -> np.ndarray:
  """int64 [n, 4] (start, end, input bytes, target bytes) of the task's records, memory-mapped."""
  return np.load(os.path.join(cache_dir, RECORDS, name + ".npy"), mmap_mode="r")


def split_range(entry: dict, split: str) -> tuple[int, int]:
  """[first, last) record numbers of `split` in the task's .jsonl."""
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
  start = 0
  for s in SPLITS:
    if s == split:
      return start, start + entry["splits"][s]
    start += entry["splits"][s]
  raise AssertionError(split)


def read_records(cache_dir: str, name: str, first: int, last: int,
                 table: Optional[np.ndarray] = None) -> list[dict]:
  """Records first..last-1 of a task (one contiguous read)."""
  if last <= first:
    return []
  table = offsets(cache_dir, name) if table is None else table
  start, end = int(table[first, 0]), int(table[last - 1, 1])
  with open(os.path.join(cache_dir, RECORDS, name + ".jsonl"), "rb") as f:
    f.seek(start)
    data = f.read(end - start)
  return [json.loads(line) for line in data.split(b"\n")[:last - first]]


def read_split(cache_dir: str, entry: dict, split: str) -> list[dict]:
  """The task's formatted records of `split`, in their stored (hash) order."""
  first, last = split_range(entry, split)
  return read_records(cache_dir, entry["name"], first, last)
