"""Optimizer: AdamW or Adafactor, warmup + decay, clipping, a separate routing LR.

The optimizer only ever sees the trainable parameters (see `state.py`), so a
frozen backbone carries no optimizer state. Routing logits (paths ending in
`routing_logits`) get `routing_learning_rate` and `routing_weight_decay` (default 0: decay
would pull the routing towards uniform); everything else `learning_rate`
and `weight_decay`. With `sparse_routing` (AdamW only) the routing logits are
updated row-sparsely, only the rows of the batch's tasks (sparse_routing.py):
the same result as dense AdamW when every step sees every task, and a step
cost independent of the number of tasks.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax.numpy as jnp
import optax

from mhr_jax.param_tree import is_routing_path
from mhr_jax.training.sparse_routing import SparseRoutingOptimizer

OPTIMIZERS = ("adamw", "adafactor")
SCHEDULES = ("linear", "cosine", "constant")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  name: str = "adamw"
  learning_rate: float = 1e-3
  routing_learning_rate: Optional[float] = None  # None: same as learning_rate
  warmup_fraction: float = 0.06
  schedule: str = "linear"  # decay after warmup, to 0 at the last step
  weight_decay: float = 0.0
  routing_weight_decay: float = 0.0
  clip_grad_norm: Optional[float] = 1.0
  b1: float = 0.9
  b2: float = 0.999
  sparse_routing: bool = False

  def __post_init__(self):
    if self.name not in OPTIMIZERS:
      raise ValueError(f"optimizer name={self.name!r} is not supported; valid choices: "
                       f"{list(OPTIMIZERS)}")
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule={self.schedule!r} is not supported; valid choices: "
                       f"{list(SCHEDULES)}")
    if self.sparse_routing and self.name != "adamw":
      raise ValueError(f"sparse_routing=True needs optimizer name='adamw', got "
                       f"name={self.name!r}; valid choices with sparse routing: ['adamw']")


def learning_rate_schedule(peak: float, total_steps: int, warmup_fraction: float,
                           schedule: str) -> Callable:
  warmup = int(round(total_steps * warmup_fraction))
  decay_steps = max(total_steps - warmup, 1)
  if schedule == "constant":
    after = optax.constant_schedule(peak)
  elif schedule == "cosine":
    after = optax.cosine_decay_schedule(peak, decay_steps)
  else:
    after = optax.linear_schedule(peak, 0.0, decay_steps)
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def _base(config: OptimizerConfig, lr, weight_decay: float) -> optax.GradientTransformation:
  if config.name == "adafactor":
    return optax.adafactor(learning_rate=lr, weight_decay_rate=weight_decay or None)
  return optax.adamw(lr, b1=config.b1, b2=config.b2, weight_decay=weight_decay)


def param_label(path: str) -> str:
  """'routing' for routing logits, 'adapter' for every other trainable parameter."""
  return "routing" if is_routing_path(path) else "adapter"


def make_optimizer(config: OptimizerConfig, total_steps: int):
  """Returns (optimizer over a flat {path: array} dict, main learning-rate schedule).

  The optimizer is an optax transformation, or with `sparse_routing` a
  `SparseRoutingOptimizer` (which `make_train_step` recognises).
  """
  lr = learning_rate_schedule(config.learning_rate, total_steps, config.warmup_fraction,
                              config.schedule)
  routing_lr = learning_rate_schedule(config.routing_learning_rate or config.learning_rate,
                                      total_steps, config.warmup_fraction, config.schedule)
  if config.sparse_routing:
    return SparseRoutingOptimizer(
        dense=_base(config, lr, config.weight_decay), routing_learning_rate=routing_lr,
        b1=config.b1, b2=config.b2, weight_decay=config.routing_weight_decay,
        clip_grad_norm=config.clip_grad_norm or None), lambda step: lr(jnp.asarray(step))
  labels = lambda params: {k: param_label(k) for k in params}
  tx = optax.multi_transform({"adapter": _base(config, lr, config.weight_decay),
                              "routing": _base(config, routing_lr, config.routing_weight_decay)},
                             labels)
  if config.clip_grad_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_grad_norm), tx)
  return tx, lambda step: lr(jnp.asarray(step))
