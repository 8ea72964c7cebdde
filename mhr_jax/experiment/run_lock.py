"""One run per output_dir: an exclusive `fcntl.flock` on `<output_dir>/.lock`.

Two runs writing one checkpoint directory race (Orbax tmp directories
renamed under each other). `hold(output_dir)` takes a non-blocking exclusive
lock and writes this process's PID into the file; a second process gets
`errors.OutputDirError: output_dir X is in use by PID N` at once. The lock is
held until the process exits (the OS releases it even after `kill -9`, so a
stale file never blocks); taking it again in the same process is a no-op.
"""

from __future__ import annotations

import fcntl
import os

from mhr_jax import errors

LOCK_NAME = ".lock"
_held: dict[str, int] = {}  # realpath -> open fd


def holder(output_dir: str) -> str:
  """The PID written in the lock file ('?' if unreadable)."""
  try:
    with open(os.path.join(output_dir, LOCK_NAME)) as f:
      return f.read().strip() or "?"
  except OSError:
    return "?"


def hold(output_dir: str) -> None:
  """Locks output_dir for this process (which must exist), or raises OutputDirError."""
  key = os.path.realpath(output_dir)
  if key in _held:
    return
  path = os.path.join(output_dir, LOCK_NAME)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise errors.OutputDirError(f"cannot create the lock file {path} ({e.strerror})") from None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    os.close(fd)
    raise errors.OutputDirError(
        f"output_dir {output_dir} is in use by PID {holder(output_dir)}; wait for that run "
        "to finish, or use another output_dir") from None
  os.ftruncate(fd, 0)
  os.write(fd, str(os.getpid()).encode())
  _held[key] = fd


def release(output_dir: str) -> None:
  fd = _held.pop(os.path.realpath(output_dir), None)
  if fd is not None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)
