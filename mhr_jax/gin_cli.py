"""t5x-style command line for gin: --gin_file=F (repeatable), --gin.NAME=VALUE.

`--gin.NAME=VALUE` is the binding `NAME = VALUE`; string values may be
written without quotes (`--gin.run.stage=adapt`): a value that does not parse
as a Python/gin literal or reference is quoted for you.
"""

from __future__ import annotations

import ast
import difflib
import logging
import os
from typing import Sequence

import gin
from gin import config as gin_config

from mhr_jax import errors


class GinConfigError(errors.ConfigError):
  """A gin file or binding could not be applied; the message names it."""


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
  """Pulls --gin_file, --gin_search_path and --gin.X=Y out of argv.

  Returns (gin_files, bindings, remaining_args).
  """
  files, bindings, rest = [], [], []
  it = iter(argv)
  for arg in it:
    if arg.startswith("--gin_file=") or arg == "--gin_file":
      files.append(arg.split("=", 1)[1] if "=" in arg else next(it))
    elif arg.startswith("--gin_search_path=") or arg == "--gin_search_path":
      path = arg.split("=", 1)[1] if "=" in arg else next(it)
      gin.add_config_file_search_path(path)
    elif arg.startswith("--gin."):
      body = arg[len("--gin."):]
      if "=" not in body:
        raise GinConfigError(f"gin override {arg!r} has no value: write --gin.NAME=VALUE")
      name, value = body.split("=", 1)
      bindings.append(f"{name} = {_literal(value)}")
    else:
      rest.append(arg)
  return files, bindings, rest


def _literal(value: str) -> str:
  """Keeps literals, references (@f, %X) and containers; quotes bare words."""
  v = value.strip()
  if v.startswith(("@", "%", "'", '"', "[", "(", "{")):
    return v
  try:
    ast.literal_eval(v)
    return v
  except (ValueError, SyntaxError):
    return repr(v)


def parse(files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()) -> None:
  """Applies gin files then bindings; raises GinConfigError naming what went wrong."""
  for p in search_paths:
    gin.add_config_file_search_path(p)
  for f in files:
    if not _findable(f):
      raise GinConfigError(f"gin file {f!r} not found (searched: cwd, "
                           f"{', '.join(search_paths) or 'no search paths'})")
  root = logging.getLogger()
  level = root.level
  root.setLevel(logging.CRITICAL)  # gin logs an ERROR for every search-path miss
  try:
    gin.parse_config_files_and_bindings(list(files), list(bindings))
  except (ValueError, KeyError, TypeError, SyntaxError) as e:
    msg = first_line(e)
    known = _known_configurables()
    hint = ""
    for b in bindings:
      name = b.split("=", 1)[0].strip()
      target = name.rsplit(".", 1)[0]
      if target and target not in known:
        close = difflib.get_close_matches(target, known, n=5)
        hint = f"; unknown configurable {target!r}" + (f", did you mean {close}?" if close else "")
        break
    raise GinConfigError(f"bad gin configuration: {msg}{hint}") from e
  finally:
    root.setLevel(level)


def config_text() -> str:
  """The gin configuration in force: every binding after all files and overrides.

  (`gin.config_str()`: what `run.py --print_config` prints and every run
  writes to output_dir/config.gin.)
  """
  return gin.config_str()


def first_line(error: BaseException) -> str:
  """The error's own message, without the 'In call to configurable' lines gin appends."""
  return errors.one_line(error)


def _findable(path: str) -> bool:
  if os.path.exists(path):
    return True
  try:
    return any(os.path.exists(os.path.join(p, path))
               for p in getattr(gin_config, "_LOCATION_PREFIXES", []))
  except Exception:  # pylint: disable=broad-except
    return False


def _known_configurables() -> list[str]:
  names = []
  for key, _ in gin_config._REGISTRY.items():  # pylint: disable=protected-access
    names.append(str(key).split(".")[-1])
  return sorted(set(names))
