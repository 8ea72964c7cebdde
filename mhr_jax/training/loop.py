"""The train loop: steps, progress bar, TensorBoard scalars, checkpoints, NaN guard."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import jax
import numpy as np
from tqdm.auto import tqdm

from mhr_jax.training.state import TrainState

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
  """Raised when the training loss becomes NaN or infinite."""


def train_loop(state: TrainState, train_step: Callable, batches: Iterator[Mapping[str, Any]],
               num_steps: int, *, put_batch: Callable = lambda b: b,
               writer: Optional[Any] = None, log_every: int = 10,
               checkpoint_fn: Optional[Callable[[TrainState, int], None]] = None,
               description: str = "train", show_progress: bool = True) -> tuple[TrainState, list]:
  """Runs `train_step` until `state.step == num_steps`.

  Args:
    state: initial (or restored) state; training resumes from `state.step`.
    train_step: jitted (state, batch) -> (state, metrics).
    batches: host batches (dicts of numpy arrays), already positioned at `state.step`.
    num_steps: total number of steps (not the number still to run).
    put_batch: places a host batch on devices (e.g. sharded over the mesh).
    writer: a TensorBoard SummaryWriter-like object (`add_scalar`), or None.
    log_every: host sync / logging interval in steps.
    checkpoint_fn: called as checkpoint_fn(state, step) after every step.
  Returns:
    (final state, list of logged metric dicts).
  """
  start = int(state.step)
  history = []
  bar = tqdm(total=num_steps, initial=start, desc=description, disable=not show_progress,
             dynamic_ncols=True, leave=False)
  pending, tokens_since, t0 = None, 0.0, time.perf_counter()
  shown = start  # steps already on the bar: it advances at host syncs, so its rate is honest
  for step in range(start, num_steps):
    batch = next(batches)
    tokens_since += float(np.count_nonzero(batch["encoder_input_tokens"]) +
                          np.sum(batch["decoder_loss_weights"]))
    state, metrics = train_step(state, put_batch(batch))
    pending = metrics
    done = step + 1
    if done % log_every == 0 or done == num_steps:
      m = {k: float(v) for k, v in jax.device_get(pending).items()}
      if not math.isfinite(m["loss"]):
        bar.close()
        raise NonFiniteLossError(
            f"{description}: loss became {m['loss']} at or before step {done}; "
            "try a lower learning rate, gradient clipping, or float32 activations")
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
    if checkpoint_fn is not None:
      checkpoint_fn(state, done)
  bar.close()
  return state, history
