"""Preemption: SIGTERM / SIGINT end a run at a step boundary, after a checkpoint.

Schedulers and TPU/GPU preemption send SIGTERM (then SIGKILL after a grace
period); a user sends SIGINT (Ctrl-C). `handle_signals()` (installed by
`run.py`) turns either into a request:

* inside `deferred()` (the train loop), the signal only sets a flag; the loop
  finishes the current step, saves a forced checkpoint, and raises
  `Preempted(step, saved=True)`;
* outside it (data loading, evaluation: nothing to save), `Preempted` is
  raised at once;
* a second signal aborts at once (`os._exit(128 + signum)`): the last
  complete checkpoint stays, a half-written one is an Orbax tmp directory
  that the next run deletes.

`run.py` prints `Preempted`'s one line and exits 128 + signum (143 for
SIGTERM, 130 for SIGINT). This module imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import Iterator, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)

_requested: Optional[int] = None
_deferring = 0


class Preempted(BaseException):
  """The run was asked to stop (SIGTERM/SIGINT); not an Exception, like KeyboardInterrupt.

  Attributes:
    signum: the signal received.
    step: the step the train loop stopped after (None outside training).
    saved: whether a checkpoint of that step was written.
  """

  def __init__(self, signum: int, step: Optional[int] = None, saved: bool = False,
               description: str = ""):
    super().__init__(signum, step, saved, description)
    self.signum, self.step, self.saved, self.description = signum, step, saved, description

  @property
  def exit_code(self) -> int:
    return 128 + int(self.signum)

  def __str__(self) -> str:
    if self.step is None:
      return (f"preempted by {signal.Signals(self.signum).name} outside training (nothing to "
              "save); rerun the same command to resume")
    if self.saved:
      return f"preempted at step {self.step}; checkpoint saved; rerun the same command to resume"
    return (f"preempted at step {self.step} of {self.description} (this stage keeps no "
            "checkpoint and restarts); rerun the same command to resume")


def requested() -> Optional[int]:
  """The signal number of a pending stop request, or None."""
  return _requested


def request(signum: int = signal.SIGTERM) -> None:
  """Records a stop request as a signal would (tests use it to preempt at a chosen step)."""
  global _requested
  _requested = int(signum)


def clear() -> None:
  global _requested
  _requested = None


def _handler(signum, frame):  # pylint: disable=unused-argument
  if _requested is not None:
    sys.stderr.write(f"{signal.Signals(signum).name} again: aborting without saving "
                     "(the last complete checkpoint is kept)\n")
    sys.stderr.flush()
    os._exit(128 + int(signum))  # pylint: disable=protected-access
  request(signum)
  if _deferring == 0:
    raise Preempted(signum)


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
  """Installs the SIGTERM/SIGINT handlers for the duration (main thread only)."""
  previous = {s: signal.signal(s, _handler) for s in SIGNALS}
  clear()
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    clear()


@contextlib.contextmanager
def deferred() -> Iterator[None]:
  """Within this block a signal only sets the flag; the caller checks `requested()`."""
  global _deferring
  _deferring += 1
  try:
    yield
  finally:
    _deferring -= 1
