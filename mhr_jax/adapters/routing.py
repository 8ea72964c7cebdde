"""Routing: which skills each task uses (Polytropon / MHR).

Notation (Ponti et al. 2023; Caccia et al. 2023):
  Z ∈ R^{|T| x h x |Φ|}  routing logits: tasks x heads x skills
                          (param `routing_logits`, init U(-1e-3, 1e-3)).
  Training:   ẑ = σ((Z_t + log u - log(1 - u)) / τ),  u ~ U(0, 1)
              (a relaxed-Bernoulli / Gumbel-sigmoid sample, as PEFT's
              `RelaxedBernoulli(τ, logits=Z_t).rsample()`), or with
              `relaxed=False` (mttl's T0 setting) ẑ = σ(Z_t);
  evaluation: ẑ = σ(Z_t).
  Weights:    w_{t,h,s} = ẑ_{t,h,s} / (Σ_s' ẑ_{t,h,s'} + 1e-12).
  Straight-through (optional): the forward pass uses the hard
  1[ẑ > 0.5] in place of ẑ, the backward pass the gradient of ẑ.

Task ids out of [0, |T|) are errors, never silently another task's row:
`check_task_ids` raises eagerly on concrete ids and, under `jit`, from a
host callback when the computation runs; the gather itself fills rows of
bad ids with NaN, so a bad id that escapes every check poisons its output.
Missing ids are errors too, never row 0: a routed `T5` called without
task_ids raises (outside `init`), and every evaluation example must carry
its 'task_id' (mhr_jax/evaluation reads no default).
"""

from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mhr_jax.param_tree import Role, declare_roles

# Logical axis names of the routing table and of LoRA ranks. 'heads' is taken
# by attention heads, so MHR heads are 'routing_heads'. The partitioning
# rules should map all of these to None (replicated): they are tiny.
ROUTING_AXES = ("tasks", "routing_heads", "skills")
ADAPTER_AXES = ROUTING_AXES + ("lora_rank",)
EPS = 1e-12
INIT_RANGE = 1e-3


def uniform_routing_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """Z ~ U(-1e-3, 1e-3) (PEFT's `PolyRouter.reset`)."""
  return jax.random.uniform(key, shape, dtype, -INIT_RANGE, INIT_RANGE)


def _out_of_range_message(bad: np.ndarray, n_tasks: int) -> str:
  values = sorted(set(int(v) for v in np.ravel(bad)))
  return (f"task ids {values[:10]}{' ...' if len(values) > 10 else ''} are out of range: "
          f"the routing table has n_tasks={n_tasks} rows, valid ids are 0..{n_tasks - 1}")


def validate_task_ids(task_ids: Any, n_tasks: int) -> None:
  """Host-side check for data code: raises ValueError naming the bad ids."""
  ids = np.asarray(task_ids)
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"task ids must be integers, got dtype {ids.dtype}")
  bad = ids[(ids < 0) | (ids >= n_tasks)]
  if bad.size:
    raise ValueError(_out_of_range_message(bad, n_tasks))


def check_task_ids(task_ids: jax.Array, n_tasks: int, in_jit: bool = True) -> None:
  """Raises on ids outside [0, n_tasks): now if `task_ids` is concrete, else when run.

  Under `jit` (with `in_jit`) the check is a `jax.debug.callback` (one per
  call, on [batch] int32); its ValueError surfaces as a runtime error naming
  the bad ids. The callback synchronises with the host, so hot loops check
  their batches on the host instead (`validate_task_ids`) and pass
  in_jit=False.
  """
  try:
    ids = np.asarray(task_ids)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    if in_jit:
      jax.debug.callback(validate_task_ids, task_ids, n_tasks)
    return
  validate_task_ids(ids, n_tasks)


def routing_table_size(adapter) -> Optional[int]:
  """n_tasks of a routed `AdapterConfig` (the valid ids are 0..n_tasks-1), else None."""
  if adapter is not None and adapter.routed:
    return int(adapter.n_tasks)
  return None


def gather_routing_logits(routing_logits: jax.Array, task_ids: jax.Array) -> jax.Array:
  """Z[task_ids]: [tasks, h, s], [b] -> [b, h, s]; rows of out-of-range ids are NaN."""
  # jnp.take counts negative indices from the end even with mode='fill': move
  # them past the end first.
  task_ids = jnp.where(task_ids < 0, routing_logits.shape[0], task_ids)
  return jnp.take(routing_logits, task_ids, axis=0, mode="fill", fill_value=jnp.nan)


def relaxed_bernoulli_sample(rng: jax.Array, logits: jax.Array, temperature: float) -> jax.Array:
  """σ((logits + log u - log(1-u)) / τ), u ~ U(0, 1) clamped to [eps, 1-eps] as torch does."""
  eps = jnp.finfo(logits.dtype).eps
  u = jnp.clip(jax.random.uniform(rng, logits.shape, logits.dtype), eps, 1.0 - eps)
  return jax.nn.sigmoid((logits + jnp.log(u) - jnp.log1p(-u)) / temperature)


def routing_weights(logits: jax.Array, *, deterministic: bool, rng: Optional[jax.Array] = None,
                    temperature: float = 1.0, straight_through: bool = False,
                    relaxed: bool = True) -> jax.Array:
  """Routing logits [..., h, s] -> mixing weights w [..., h, s] (float32), each head Σ_s ≈ 1.

  relaxed=False: σ(logits) in training as in evaluation (no sampling, no rng).
  """
  logits = logits.astype(jnp.float32)
  if deterministic or not relaxed:
    probs = jax.nn.sigmoid(logits)
  else:
    if rng is None:
      raise ValueError("stochastic routing (deterministic=False) needs an rng "
                       "(the 'routing' stream)")
    probs = relaxed_bernoulli_sample(rng, logits, temperature)
    # XLA's CPU logistic can map NaN inputs to finite values: keep the NaN rows
    # of out-of-range task ids NaN, so that they poison the loss.
    probs = jnp.where(jnp.isnan(logits), jnp.nan, probs)
  if straight_through:
    hard = (probs > 0.5).astype(probs.dtype)
    probs = probs + jax.lax.stop_gradient(hard - probs)
  return probs / (jnp.sum(probs, axis=-1, keepdims=True) + EPS)


@declare_roles(routing_logits=Role.ROUTING)
class Router(nn.Module):
  """Holds Z and maps task ids to mixing weights.

  Attributes:
    n_tasks, n_heads, n_skills: shape of Z.
    temperature: τ of the training-time relaxed Bernoulli.
    relaxed: sample a relaxed Bernoulli in training (else σ(Z) throughout).
    straight_through: hard routing with a straight-through gradient.
  """

  n_tasks: int
  n_heads: int
  n_skills: int
  temperature: float = 1.0
  straight_through: bool = False
  param_dtype: Any = jnp.float32
  relaxed: bool = True

  @nn.compact
  def __call__(self, task_ids: jax.Array, deterministic: bool = True) -> jax.Array:
    """task_ids [b] int -> w [b, h, s] float32 (uses rng stream 'routing' in training)."""
    shape = (self.n_tasks, self.n_heads, self.n_skills)
    if self.has_variable("params", "routing_logits") and not self.is_initializing():
      # Any number of rows: the sparse-routing train step passes only the batch's
      # rows (training/sparse_routing.py), with task ids renumbered into them.
      z = nn.meta.unbox(self.get_variable("params", "routing_logits"))
      if z.shape[1:] != shape[1:]:
        raise ValueError(f"{'/'.join(self.path)}/routing_logits has shape {z.shape}; expected "
                         f"[rows, n_heads={self.n_heads}, n_skills={self.n_skills}]")
    else:
      z = self.param("routing_logits",
                     nn.with_logical_partitioning(uniform_routing_init, ROUTING_AXES),
                     shape, self.param_dtype)
    logits = gather_routing_logits(z, task_ids)
    rng = None if deterministic or not self.relaxed else self.make_rng("routing")
    return routing_weights(logits, deterministic=deterministic, rng=rng,
                           temperature=self.temperature, straight_through=self.straight_through,
                           relaxed=self.relaxed)


def router_from_config(config, name: Optional[str] = None, param_dtype=jnp.float32) -> Router:
  """A `Router` shaped by an `AdapterConfig`."""
  return Router(config.n_tasks, config.n_heads, config.n_skills,
                temperature=config.routing_temperature,
                straight_through=config.straight_through, param_dtype=param_dtype, name=name,
                relaxed=getattr(config, "relaxed_bernoulli", True))
