"""Fetch BIG-bench's JSON tasks once: `pip download` the sdist, extract task.json files.

The only download in this package, run explicitly with
`python -m tasks.bigbench prepare [--cache_dir DIR]`. Layout of the cache:

  DIR/tasks/<task>/task.json            a task
  DIR/tasks/<task>/<subtask>/task.json  a subtask (its parent's JSON then holds no examples)
  DIR/index.json                        {"source": ..., "tasks": [{name, path, kind, n_examples}]}

Extraction goes to a temporary sibling directory that is renamed into place,
so an interrupted run never leaves a half-written cache.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from typing import Callable, Optional

from tasks.bigbench.parse import parse_task

VERSION = "1.0.0"
INDEX = "index.json"
# .../bigbench/benchmark_tasks/<task>/task.json or .../<task>/<subtask>/task.json
_MEMBER = re.compile(r"(?:^|/)bigbench/benchmark_tasks/((?:[^/]+/){1,2})task\.json$")


def default_cache_dir() -> str:
  """$MHR_JAX_BIGBENCH_DIR, default ~/.cache/mhr_jax/bigbench."""
  return os.path.expanduser(os.environ.get("MHR_JAX_BIGBENCH_DIR",
                                           os.path.join("~", ".cache", "mhr_jax", "bigbench")))


def pip_download(dest: str, version: str = VERSION) -> str:
  """`pip download --no-deps bigbench==VERSION -d dest`; returns the archive's path."""
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", f"bigbench=={version}",
         "-d", dest]
  result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if result.returncode != 0:
    raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
  found = sorted(glob.glob(os.path.join(dest, "bigbench-*")))
  if not found:
    raise RuntimeError(f"pip download succeeded but no bigbench archive in {dest}: "
                       f"{os.listdir(dest)}")
  return found[0]


def _extract(archive: str, out_dir: str) -> int:
  """Copies the task.json members of a .tar.gz sdist or .whl/.zip into out_dir/tasks/."""
  n = 0

  def write(rel: str, data: bytes) -> None:
    nonlocal n
    path = os.path.join(out_dir, "tasks", rel, "task.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(data)
    n += 1

  if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as zf:
      for name in zf.namelist():
        m = _MEMBER.search(name)
        if m:
          write(m.group(1), zf.read(name))
  else:
    with tarfile.open(archive) as tf:
      for member in tf:
        m = _MEMBER.search(member.name)
        if m and member.isfile():
          write(m.group(1), tf.extractfile(member).read())
  return n


def build_index(cache_dir: str) -> dict:
  """Parses every task.json under cache_dir/tasks; writes and returns index.json."""
  entries = []
  root = os.path.join(cache_dir, "tasks")
  for path in sorted(glob.glob(os.path.join(root, "*", "task.json")) +
                     glob.glob(os.path.join(root, "*", "*", "task.json"))):
    rel = os.path.relpath(os.path.dirname(path), root)
    with open(path, encoding="utf-8") as f:
      kind, records = parse_task(json.load(f))
    if records:
      entries.append({"name": rel.replace(os.sep, "."), "path": rel.replace(os.sep, "/"),
                      "kind": kind, "n_examples": len(records)})
  index = {"source": f"bigbench=={VERSION}", "tasks": entries}
  with open(os.path.join(cache_dir, INDEX), "w") as f:
    json.dump(index, f, indent=1)
  return index


def prepare(cache_dir: Optional[str] = None,
            download: Callable[[str], str] = pip_download) -> str:
  """Downloads (via `download(tmp_dir) -> archive path`), extracts and indexes; returns the dir."""
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  parent = os.path.dirname(cache_dir)
  os.makedirs(parent, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=parent, prefix=".bigbench_download_") as tmp:
    archive = download(tmp)
    staging = tempfile.mkdtemp(dir=parent, prefix=".bigbench_staging_")
    try:
      if _extract(archive, staging) == 0:
        raise RuntimeError(f"no bigbench/benchmark_tasks/*/task.json in {archive}")
      build_index(staging)
      old = None
      if os.path.exists(cache_dir):
        old = tempfile.mkdtemp(dir=parent, prefix=".bigbench_old_")
        os.rename(cache_dir, os.path.join(old, "cache"))
      os.rename(staging, cache_dir)
      if old:
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
      shutil.rmtree(staging, ignore_errors=True)
      raise
  return cache_dir
