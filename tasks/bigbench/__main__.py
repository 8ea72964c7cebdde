"""BIG-bench data commands.

  python -m tasks.bigbench prepare [--cache_dir DIR] [--archive PATH] [--index_url URL]
      download bigbench==1.0.0's sdist from the package index (or take PATH), extract
      its JSON tasks and parse them once into DIR (default $MHR_JAX_BIGBENCH_DIR or
      ~/.cache/mhr_jax/bigbench)
  python -m tasks.bigbench lengths --input_length N --target_length M [--cache_dir DIR]
      per training task, the fraction of training inputs / targets those lengths cut
      (byte vocabulary), and the length percentiles over the whole mixture
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import numpy as np

from tasks.bigbench import fetch, store


def _prepare(args) -> int:
  download = fetch.local_archive(args.archive) if args.archive else None
  cache_dir = fetch.prepare(args.cache_dir, download, index_url=args.index_url)
  index = store.read_index(cache_dir)
  entries = index["tasks"]
  dups = sum(e["duplicates"] for e in entries)
  print(f"BIG-bench: {len(entries)} JSON tasks and subtasks "
        f"({sum(e['n_examples'] for e in entries):,} examples after dropping {dups:,} "
        f"duplicates) in {cache_dir}")
  if args.cache_dir and os.path.abspath(args.cache_dir) != os.path.abspath(
      fetch.default_cache_dir()):
    print(f"set MHR_JAX_BIGBENCH_DIR={cache_dir} so `import tasks` registers them")
  return 0


def _lengths(args) -> int:
  from tasks.bigbench import mixture, register  # pylint: disable=g-import-not-at-top
  cache_dir = os.path.abspath(os.path.expanduser(args.cache_dir or fetch.default_cache_dir()))
  train, _ = register.train_and_heldout(store.ensure_store(cache_dir)["tasks"])
  stores = [mixture.StoreTask(cache_dir, e["name"], e["splits"]["train"], i)
            for i, e in enumerate(train) if e["splits"]["train"]]
  lengths = {"inputs": args.input_length, "targets": args.target_length}
  tables = mixture._load_tables(stores)  # pylint: disable=protected-access
  report = mixture.truncation_report(stores, lengths, None, tables)
  counts = np.asarray([min(s.n_train, args.cap) for s in stores], np.float64)
  text, _ = mixture.describe_truncation(report, lengths, counts / counts.sum(),
                                        register.TRAIN_MIXTURE, args.threshold, shown=0)
  print(text.split(": `python")[0])
  print(f"{'task':60s} {'n_train':>8s} {'inputs cut':>10s} {'targets cut':>11s}")
  for r in sorted(report, key=lambda r: -max(r["inputs"], r["targets"])):
    print(f"{r['task']:60s} {r['n_train']:8d} {100 * r['inputs']:9.1f}% {100 * r['targets']:10.1f}%")
  # Percentiles of tokens (bytes + EOS) over the mixture, each task weighted by its rate.
  weights = np.concatenate([np.full(len(t), c / len(t)) for t, c in zip(tables, counts)])
  for k, key in enumerate(("inputs", "targets")):
    values = np.concatenate([t[:, 2 + k] for t in tables]) + 1
    order = np.argsort(values)
    cum = np.cumsum(weights[order]) / weights.sum()
    pcts = {p: int(values[order][np.searchsorted(cum, p / 100)]) for p in (50, 90, 95, 99)}
    print(f"{key} tokens (byte vocabulary, with EOS) percentiles over the mixture: {pcts}")
  return 0


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m tasks.bigbench",
                                   description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  prep = sub.add_parser("prepare", help="download and parse bigbench==1.0.0's JSON tasks")
  prep.add_argument("--cache_dir", default=None,
                    help=f"where to put the tasks (default {fetch.default_cache_dir()}, "
                         "or $MHR_JAX_BIGBENCH_DIR)")
  prep.add_argument("--archive", default=None,
                    help=f"an already downloaded {fetch.SDIST} (or wheel): no download")
  prep.add_argument("--index_url", default=None,
                    help=f"package index simple API (default $PIP_INDEX_URL or "
                         f"{fetch.DEFAULT_INDEX_URL})")
  lens = sub.add_parser("lengths", help="how much given sequence lengths cut, per task")
  lens.add_argument("--input_length", type=int, required=True)
  lens.add_argument("--target_length", type=int, required=True)
  lens.add_argument("--cache_dir", default=None)
  lens.add_argument("--cap", type=int, default=3000, help="mixing-rate cap (weights)")
  lens.add_argument("--threshold", type=float, default=0.1)
  args = parser.parse_args(argv)
  if args.command == "prepare":
    return _prepare(args)
  return _lengths(args)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
