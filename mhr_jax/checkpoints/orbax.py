"""Training checkpoints on Orbax: the only module that imports orbax.

Orbax's API moves between releases (orbax-checkpoint 0.12.8 is pinned), so
every call into it lives here.

A step directory holds two items:

    <directory>/<step>/state/   the train state pytree (params, optimizer
                                state, step, rng), arrays written per shard
    <directory>/<step>/extra/   JSON: task-id table, method, configs

The data position is not saved: a resumed run rebuilds its data stream from
the same seed and skips the `step` batches already trained on.

Atomicity: Orbax writes a step into `<step>.orbax-checkpoint-tmp` and renames
it to `<step>` only once every file is written. A save that dies midway
leaves only the tmp directory, which no step listing reports and which the
next `CheckpointStore` on the directory deletes. A save that runs out of
space raises `errors.DiskFullError` after deleting its tmp directory.

Restore is defensive (docs/DESIGN.md, "Failure model"): without an explicit
step it tries the steps newest-first, skips (with one warning each, naming
the directory) any that cannot be read or that hold NaN/inf values, and
fails with one line listing the steps tried only when none restores.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

from mhr_jax import errors
from mhr_jax.training.finite import count_nonfinite

log = logging.getLogger(__name__)

_STATE = "state"
_EXTRA = "extra"


def _abstract(target: Any) -> Any:
  """Concrete jax arrays -> ShapeDtypeStructs carrying their sharding.

  ShapeDtypeStructs (with `.sharding`) pass through, so a target may be
  either an abstract tree or a freshly initialised state.
  """
  def leaf(x):
    if isinstance(x, jax.Array):
      return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x
  return jax.tree.map(leaf, target)


def _is_disk_full(error: BaseException) -> bool:
  """Whether `error` (or an error it wraps) is ENOSPC / EDQUOT."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if "No space left on device" in str(error) or "Disk quota exceeded" in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


class CheckpointStore:
  """Numbered training checkpoints in one directory: save every N steps, keep the last K.

  Attributes:
    directory: where the step directories live.
    save_every_steps: `save` writes only at multiples of this (or with
      `force=True`, e.g. for the final step).
    keep_last: how many of the newest steps to keep; None keeps all.
    asynchronous: write arrays in a background thread after copying them off
      the devices; call `wait_until_finished` before relying on the files.
  """

  def __init__(self, directory: str | os.PathLike, save_every_steps: int = 1,
               keep_last: Optional[int] = None, asynchronous: bool = False):
    if save_every_steps < 1:
      raise ValueError(f"save_every_steps must be >= 1, got {save_every_steps}")
    if keep_last is not None and keep_last < 1:
      raise ValueError(f"keep_last must be >= 1 or None (keep all), got {keep_last}")
    self.save_every_steps = save_every_steps
    self.keep_last = keep_last
    policies = ocp.checkpoint_managers
    options = ocp.CheckpointManagerOptions(
        save_decision_policy=policies.FixedIntervalPolicy(save_every_steps),
        preservation_policy=policies.LatestN(keep_last),
        enable_async_checkpointing=asynchronous,
        # Deletes what a crashed save left behind (the tmp directories).
        cleanup_tmp_directories=True,
        create=True)
    self._manager = ocp.CheckpointManager(
        epath.Path(directory).resolve(), item_names=(_STATE, _EXTRA), options=options)
    # Orbax deletes the leftovers in a background thread and waits for it only
    # before the first save; wait now, so the directory is clean on return.
    # (Private in 0.12.8; skipped if a later release drops it.)
    wait_for_cleanup = getattr(self._manager, "_maybe_await_cleanup_tmp_directory", None)
    if wait_for_cleanup is not None:
      wait_for_cleanup()

  @property
  def directory(self) -> epath.Path:
    return self._manager.directory

  def save(self, step: int, state: Any, extra: Optional[Mapping[str, Any]] = None,
           force: bool = False) -> bool:
    """Writes `state` and `extra` as step `step`, if due.

    Args:
      step: the training step (names the directory).
      state: a pytree of arrays (params, optimizer state, step, rng).
      extra: JSON-able metadata (task-id table, method, configs).
      force: save even when `step` is not a multiple of `save_every_steps`.
    Returns:
      Whether a checkpoint was written (False when not due, or when `step`
      is not newer than the latest saved step).
    """
    args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state),
                                 _EXTRA: ocp.args.JsonSave(dict(extra or {}))})
    if force and step in self.all_steps():
      return False
    try:
      return self._manager.save(int(step), args=args, force=force)
    except Exception as e:  # pylint: disable=broad-except
      if not _is_disk_full(e):
        raise
      removed = self._remove_partial(step)
      raise errors.DiskFullError(
          f"disk full while writing checkpoint step {step} to {self.directory} "
          f"({errors.one_line(e)}); removed the partial {removed or 'files'}; free space and "
          "rerun the same command to resume from the previous checkpoint") from None

  def _remove_partial(self, step: int) -> list[str]:
    """Deletes the tmp directories a failed save of `step` left; returns their names."""
    removed = []
    for path in self.directory.glob(f"{int(step)}.orbax-checkpoint-tmp*"):
      shutil.rmtree(path, ignore_errors=True)
      removed.append(path.name)
    return removed

  def is_due(self, step: int) -> bool:
    """Whether `save(step, ...)` without force would write (a multiple of save_every_steps)."""
    return bool(self._manager.should_save(int(step)))

  def read_extra(self, step: int) -> Optional[dict[str, Any]]:
    """The `extra` JSON of `step`, read without touching the arrays; None if unreadable."""
    path = self.directory / str(int(step)) / _EXTRA / "metadata"
    try:
      return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
      return None

  def delete(self, step: int) -> None:
    self._manager.delete(int(step))

  def restore(self, step: Optional[int] = None, target: Any = None,
              check_finite: bool = True) -> tuple[Any, dict[str, Any]]:
    """Reads step `step`, or the newest step that restores.

    Args:
      step: which step; None tries every step newest-first (see the module
        docstring) and returns the first that reads and is finite.
      target: the state's structure, as ShapeDtypeStructs with `.sharding`
        (or arrays, whose sharding is reused); arrays are restored straight
        onto those shardings, so the layout may differ from the saved one.
        None reuses the saved shardings (same devices only).
      check_finite: refuse a restored state holding NaN/inf values.
    Returns:
      (state, extra).
    Raises:
      FileNotFoundError (errors.MissingInputError): no checkpoint, or no step `step`.
      errors.CheckpointError: no step could be restored (one line: the steps tried).
    """
    steps = self.all_steps()
    if not steps:
      raise errors.MissingInputError(f"no checkpoints in {self.directory}")
    if step is not None and step not in steps:
      raise errors.MissingInputError(f"no checkpoint for step {step} in {self.directory}; "
                                     f"available steps: {steps}")
    candidates = [int(step)] if step is not None else steps[::-1]
    problems = []
    for s in candidates:
      try:
        state, extra = self._restore_step(s, target)
      except Exception as e:  # pylint: disable=broad-except  (TensorStore/JSON/OS errors)
        problem = f"unreadable ({errors.one_line(e)[:200]})"
      else:
        bad, total = count_nonfinite(state) if check_finite else (0, 0)
        if not bad:
          return state, extra
        problem = f"non-finite ({bad} of {total} arrays hold NaN/inf)"
      problems.append(f"{s}: {problem.split(' (')[0]}")
      if step is None:
        log.warning("checkpoint step %d in %s is %s; skipping it", s,
                    self.directory / str(s), problem)
    raise errors.CheckpointError(
        f"no checkpoint in {self.directory} could be restored: tried steps "
        f"{', '.join(problems)}; delete the directory (or the bad steps) to start over")

  def _restore_step(self, step: int, target: Any) -> tuple[Any, dict[str, Any]]:
    state_args = (ocp.args.StandardRestore(_abstract(target)) if target is not None
                  else ocp.args.StandardRestore())
    restored = self._manager.restore(
        int(step), args=ocp.args.Composite(**{_STATE: state_args,
                                              _EXTRA: ocp.args.JsonRestore()}))
    return restored[_STATE], dict(restored[_EXTRA] or {})

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "CheckpointStore":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def save_params(path: str | os.PathLike, params: Any, overwrite: bool = False) -> None:
  """Writes a bare parameter tree to `path` (atomically; blocks until written)."""
  with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
    checkpointer.save(epath.Path(path).resolve(), args=ocp.args.StandardSave(params),
                      force=overwrite)


def restore_params(path: str | os.PathLike, target: Any = None) -> Any:
  """Reads a tree written by `save_params`.

  `target`: ShapeDtypeStructs with `.sharding` (or arrays) to restore onto;
  None restores every array onto the first local device.
  """
  path = epath.Path(path).resolve()
  with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
    if target is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      saved = checkpointer.metadata(path).item_metadata
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
    return checkpointer.restore(path, args=ocp.args.StandardRestore(_abstract(target)))
