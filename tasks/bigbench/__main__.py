"""`python -m tasks.bigbench prepare [--cache_dir DIR]`: download and extract BIG-bench tasks."""

from __future__ import annotations

import argparse
import sys

from tasks.bigbench.fetch import default_cache_dir, prepare
from tasks.bigbench.register import read_index


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m tasks.bigbench")
  sub = parser.add_subparsers(dest="command", required=True)
  prep = sub.add_parser("prepare", help="pip download bigbench==1.0.0 and extract its JSON tasks")
  prep.add_argument("--cache_dir", default=None,
                    help=f"where to put the tasks (default {default_cache_dir()}, "
                         "or $MHR_JAX_BIGBENCH_DIR)")
  args = parser.parse_args(argv)
  cache_dir = prepare(args.cache_dir)
  index = read_index(cache_dir)
  print(f"BIG-bench: {len(index['tasks'])} JSON tasks in {cache_dir}")
  if args.cache_dir and args.cache_dir != default_cache_dir():
    print(f"set MHR_JAX_BIGBENCH_DIR={cache_dir} so `import tasks` registers them")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
