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
next `CheckpointStore` on the directory deletes.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

import jax
import orbax.checkpoint as ocp
from etils import epath

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
    return self._manager.save(int(step), args=args, force=force)

  def restore(self, step: Optional[int] = None,
              target: Any = None) -> tuple[Any, dict[str, Any]]:
    """Reads step `step` (default: the latest).

    Args:
      step: which step; None for the latest.
      target: the state's structure, as ShapeDtypeStructs with `.sharding`
        (or arrays, whose sharding is reused); arrays are restored straight
        onto those shardings, so the layout may differ from the saved one.
        None reuses the saved shardings (same devices only).
    Returns:
      (state, extra).
    Raises:
      FileNotFoundError: no checkpoint, or no step `step`.
    """
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"no checkpoints in {self.directory}")
      step = steps[-1]
    elif step not in steps:
      raise FileNotFoundError(f"no checkpoint for step {step} in {self.directory}; "
                              f"available steps: {steps}")
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
