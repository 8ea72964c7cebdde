"""`python -m tasks`: list the registered families, task counts and names."""

import argparse
import sys

import tasks


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="python -m tasks")
  parser.add_argument("--summary", action="store_true", help="only the per-family counts")
  args = parser.parse_args(argv)
  print(tasks.list_tasks(show_names=not args.summary))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
