"""The train loop: steps, progress bar, TensorBoard scalars, checkpoints, NaN guard, preemption.

Failure handling (docs/DESIGN.md, "Failure model"):

* every step's loss is kept on the device and checked on the host at each
  log step and before each checkpoint; a NaN/inf raises `NonFiniteLossError`
  naming the first bad step;
* before a checkpoint is written the parameters and optimizer state are
  checked too, so no checkpoint is ever written from a non-finite state;
* a SIGTERM/SIGINT (`preemption`) is honoured after the current step: a
  forced checkpoint of that step, then `Preempted`.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from mhr_jax import errors
from mhr_jax.training import preemption
from mhr_jax.training.finite import count_nonfinite
from mhr_jax.training.state import TrainState

log = logging.getLogger(__name__)


class NonFiniteLossError(errors.NonFiniteError):
  """Raised when the training loss (or the state about to be saved) becomes NaN or infinite."""


_HINT = "try a lower learning rate, gradient clipping, or float32 activations"


def _check_losses(losses: list, description: str) -> None:
  """Raises at the first non-finite loss among [(step, device scalar)]; empties the list."""
  values = jax.device_get([v for _, v in losses])
  for (step, _), v in zip(losses, values):
    if not math.isfinite(float(v)):
      raise NonFiniteLossError(
          f"{description}: loss became {float(v)} at step {step} (the first non-finite step); "
          f"no checkpoint was written from it; {_HINT}")
  losses.clear()


def _check_state(state: TrainState, step: int, description: str) -> None:
  bad, total = count_nonfinite((state.trainable, state.opt_state))
  if bad:
    raise NonFiniteLossError(
        f"{description}: {bad} of {total} parameter/optimizer arrays became non-finite at "
        f"step {step} (the loss was finite up to it); not checkpointed; {_HINT}")


def train_loop(state: TrainState, train_step: Callable, batches: Iterator[Mapping[str, Any]],
               num_steps: int, *, put_batch: Callable = lambda b: b,
               writer: Optional[Any] = None, log_every: int = 10,
               checkpoint_fn: Optional[Callable[..., Any]] = None,
               description: str = "train", show_progress: bool = True,
               history: Optional[list] = None) -> tuple[TrainState, list]:
  """Runs `train_step` until `state.step == num_steps`.

  Args:
    state: initial (or restored) state; training resumes from `state.step`.
    train_step: jitted (state, batch) -> (state, metrics).
    batches: host batches (dicts of numpy arrays), already positioned at `state.step`.
    num_steps: total number of steps (not the number still to run).
    put_batch: places a host batch on devices (e.g. sharded over the mesh).
    writer: `add_scalar(tag, value, step)` and `flush()` (experiment/tensorboard.py's
      ScalarWriter), or None.
    log_every: host sync / logging interval in steps.
    checkpoint_fn: called as checkpoint_fn(state, step, force=...) when a
      checkpoint is due. If it has a `due(step) -> bool` method, only then
      (e.g. `checkpointing.StoreCheckpoint`); otherwise after every step. The
      state is checked for NaN/inf before each call; `force=True` on
      preemption.
    description: names the run in logs and errors.
    show_progress: tqdm bar.
    history: logged metric dicts of earlier steps (a resume); appended to in place.
  Returns:
    (final state, list of logged metric dicts, including `history`'s).
  Raises:
    NonFiniteLossError: a non-finite loss or state (nothing non-finite is saved).
    preemption.Preempted: a SIGTERM/SIGINT arrived; a checkpoint of the step was
      saved when `checkpoint_fn` is given.
  """
  start = int(state.step)
  history = [] if history is None else history
  due = getattr(checkpoint_fn, "due", lambda step: True)
  bar = tqdm(total=num_steps, initial=start, desc=description, disable=not show_progress,
             dynamic_ncols=True, leave=False)
  losses: list = []  # (step, device loss) not yet checked on the host
  tokens_since, t0 = 0.0, time.perf_counter()
  shown = start  # steps already on the bar: it advances at host syncs, so its rate is honest
  try:
    with preemption.deferred():
      for step in range(start, num_steps):
        batch = next(batches)
        tokens_since += float(np.count_nonzero(batch["encoder_input_tokens"]) +
                              np.sum(batch["decoder_loss_weights"]))
        state, metrics = train_step(state, put_batch(batch))
        done = step + 1
        losses.append((done, metrics["loss"]))
        if done % log_every == 0 or done == num_steps:
          _check_losses(losses, description)
          m = {k: float(v) for k, v in jax.device_get(metrics).items()}
          elapsed = time.perf_counter() - t0
          m["step"] = done
          m["steps_per_s"] = (done - shown) / max(elapsed, 1e-9)
          m["tokens_per_s"] = tokens_since / max(elapsed, 1e-9)  # inputs + targets, no padding
          history.append(m)
          if writer is not None:
            for k, v in m.items():
              if k != "step":
                writer.add_scalar(f"{description}/{k}", v, done)
          bar.set_postfix(loss=f"{m['loss']:.4f}", steps_s=f"{m['steps_per_s']:.2f}",
                          tok_s=f"{m['tokens_per_s']:.0f}")
          bar.update(done - shown)
          shown, tokens_since, t0 = done, 0.0, time.perf_counter()
        signum = preemption.requested()
        if checkpoint_fn is not None and (signum is not None or due(done)):
          _check_losses(losses, description)
          _check_state(state, done, description)
          checkpoint_fn(state, done, force=signum is not None)
        if signum is not None:
          raise preemption.Preempted(signum, step=done, saved=checkpoint_fn is not None,
                                     description=description)
  finally:
    bar.close()
    if writer is not None:
      writer.flush()  # on disk when a run ends, a preempted or failed one too
  return state, history
