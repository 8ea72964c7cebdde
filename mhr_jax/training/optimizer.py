"""Optimizer: AdamW or Adafactor, warmup + decay, clipping, a separate routing LR.

The optimizer only ever sees the trainable parameters (see `state.py`), so a
frozen backbone carries no optimizer state. Routing logits (paths ending in
`routing_logits`) get `routing_learning_rate` and `routing_weight_decay` (default 0: decay
would pull the routing towards uniform); everything else `learning_rate`
and `weight_decay`. With `sparse_routing` (AdamW only) the routing logits are
updated row-sparsely, only the rows of the batch's tasks (sparse_routing.py):
the same result as dense AdamW when every step sees every task, and a step
cost independent of the number of tasks.

Adafactor is `optax.adafactor` without momentum (Hugging Face's `Adafactor`
with relative_step=False, warmup_init=False, as microsoft/mttl uses it:
update clipping 1.0, decay 0.8, eps 1e-30); `adafactor_scale_parameter` is
HF's `scale_parameter` (optax's `multiply_by_parameter_scale`). Its per-tensor
statistics (parameter RMS, update RMS, factored moments) are taken per layer
of a scanned parameter [layers, ...], so the result does not depend on
`scan_layers`. With `adafactor_min_dim_size_to_factor` above every dimension
the second moments are not factored, which equals HF's factoring for rank-1
LoRA factors and a one-task routing table (a factor of size 1 is exact).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import jax
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
  adafactor_scale_parameter: bool = True
  adafactor_min_dim_size_to_factor: int = 128

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


def is_scanned_path(path: str) -> bool:
  """Whether a flat parameter path is a scanned stack [layers, ...] ('encoder/layers/...')."""
  return "layers" in path.split("/")[:-1]


def per_layer(tx: optax.GradientTransformation,
              scanned: Callable[[str], bool] = is_scanned_path) -> optax.GradientTransformation:
  """`tx` on a flat {path: array} dict, each layer of a scanned parameter as its own tensor.

  For optimizers with per-tensor statistics (Adafactor): a scanned [L, ...]
  parameter is updated as the L parameters of the unscanned model would be.
  """

  # Keys masked out by optax.multi_transform carry leafless placeholders: passed through.
  def leafless(v):
    return not jax.tree.leaves(v)

  def init(params):
    return {k: (v if leafless(v) else jax.vmap(tx.init)(v) if scanned(k) else tx.init(v))
            for k, v in params.items()}

  def update(updates, state, params=None):
    new_updates, new_state = {}, {}
    for k, u in updates.items():
      p = None if params is None else params[k]
      if leafless(u):
        new_updates[k], new_state[k] = u, state[k]
      elif scanned(k):
        new_updates[k], new_state[k] = jax.vmap(tx.update)(u, state[k], p)
      else:
        new_updates[k], new_state[k] = tx.update(u, state[k], p)
    return new_updates, new_state

  return optax.GradientTransformation(init, update)


def _base(config: OptimizerConfig, lr, weight_decay: float) -> optax.GradientTransformation:
  if config.name == "adafactor":
    return per_layer(optax.adafactor(
        learning_rate=lr, weight_decay_rate=weight_decay or None,
        multiply_by_parameter_scale=config.adafactor_scale_parameter,
        min_dim_size_to_factor=config.adafactor_min_dim_size_to_factor,
        clipping_threshold=1.0, decay_rate=0.8, eps=1e-30, momentum=None))
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
