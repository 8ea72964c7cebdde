"""The project's own error types: what `run.py` reports in one line instead of a traceback.

Every error a user can cause (a bad name, number, path or checkpoint) derives
from `MhrJaxError`; its message is one line naming the bad value, what was
expected and the valid choices. `run.py` catches `MhrJaxError` (and nothing
broader), prints `run.py: error: <message>` on stderr and exits with
`exit_code`; any other exception is a bug and keeps its traceback.

Each subclass also derives from the builtin it refines (ValueError,
FileNotFoundError, ...) so callers that catch the builtin keep working.
This module imports nothing heavy (no jax, no TensorFlow).
"""

from __future__ import annotations


class MhrJaxError(Exception):
  """Base of every user-facing error; `str(e)` is one line."""

  exit_code = 2


class ConfigError(MhrJaxError, ValueError):
  """A configured name or number is invalid (unknown method, steps=-5, batch_size=0)."""


class MissingInputError(MhrJaxError, FileNotFoundError):
  """A file or directory the run reads does not exist (data, checkpoint, HF weights)."""


class CorruptInputError(MhrJaxError, ValueError):
  """A file the run reads exists but cannot be parsed (truncated weights, bad JSON)."""


class OutputDirError(MhrJaxError, OSError):
  """output_dir is not a writable directory, or another run holds it."""


class DiskFullError(MhrJaxError, OSError):
  """A write ran out of space; its partial files were removed."""


class CheckpointError(MhrJaxError, RuntimeError):
  """No checkpoint could be restored, or it does not match the current config."""


class NonFiniteError(MhrJaxError, FloatingPointError):
  """Training produced a NaN/inf loss or parameters; nothing non-finite was saved."""

  exit_code = 1


def one_line(error: BaseException) -> str:
  """The first line of an error's message (its type name when it has none)."""
  text = str(error).strip()
  if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
    text = error.args[0]
  return text.splitlines()[0] if text else type(error).__name__
