"""The adaptation methods compared in the MHR paper, each selected by name.

Two stages (Caccia et al. 2023, §5): multi-task pre-training of the adapters
on the training tasks, then few-shot adaptation to each held-out task. A
method says what each stage trains and how the adaptation parameters are
built from the multi-task ones:

  name         multi-task stage            adaptation: parameters     trained
  lora         -                           fresh LoRA on the backbone  lora_a/b
  shared_lora  one LoRA for all tasks      that LoRA                   lora_a/b
  shared_ia3   one (IA)^3 for all tasks    that (IA)^3                 ia3_scale
  poly         Poly (h=1): skills Φ + Z    Φ + one new routing row     skills, Z
  mhr          MHR (h>1): skills Φ + Z     Φ + one new routing row     skills, Z
  poly_z       as poly                     Φ frozen + new routing row  Z only
  mhr_z        as mhr                      Φ frozen + new routing row  Z only
  poly_mu      as poly                     μ: skills averaged -> LoRA  lora_a/b
  mhr_mu       as mhr                      μ: skills averaged -> LoRA  lora_a/b
  ia3          -                           fresh (IA)^3 vectors        ia3_scale
  full         the whole backbone          the backbone (no adapter)   everything

μ-averaging (Poly-μ / MHR-μ) drops the routing and turns each projection's
inventory into one LoRA with the same rank and scaling, head block by head
block (see `mu_params`):
  'uniform' (the paper's):  A_μ = (1/|Φ|) Σ_s A_{h,s},  B_μ = (1/|Φ|) Σ_s B_{h,s};
  'routing':                A_μ = Σ_s w̄_{h,s} A_{h,s},  B_μ = Σ_s w̄_{h,s} B_{h,s},
                            w̄ = mean over training tasks of the (evaluation)
                            routing weights of that projection.
Both equal Poly/MHR evaluated with the routing replaced by the averaged
weights. Training the μ-adapter a few more steps on the multi-task data
("μ zero-shot") is `mu_params` followed by ordinary training with the
'adapt' mask of a *_mu method on the multi-task mixture.

Parameters are told apart by their role (`mhr_jax.param_tree.Role`), which
the module that creates each parameter declares; a method trains a set of
roles in each of its stages.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from mhr_jax import errors, param_tree
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.adapters.lora import lora_a_bound
from mhr_jax.adapters.poly import mix_skills
from mhr_jax.adapters.routing import INIT_RANGE, routing_weights
from mhr_jax.param_tree import Role

ROUTING_INITS = ("uniform", "mean")
MU_AVERAGES = ("uniform", "routing")


class Multitask(str, enum.Enum):
  """What a method's multi-task stage trains."""

  ROUTED_SKILLS = "routed_skills"  # a Poly/MHR skill inventory Φ and its routing Z
  SHARED_LORA = "shared_lora"  # one LoRA shared by every task
  SHARED_IA3 = "shared_ia3"  # one (IA)^3 shared by every task
  BACKBONE = "backbone"  # the whole backbone, no adapter


class Heads(str, enum.Enum):
  """Routing heads of a routed method: Poly has one, MHR several."""

  ONE = "one"
  MANY = "many"


class Adaptation(str, enum.Enum):
  """How a method builds the parameters it adapts to a held-out task."""

  NEW_ROUTING = "new_routing"  # the multi-task skills + a new routing row per new task
  MU = "mu"  # the skills averaged into one LoRA (routing dropped)
  CONTINUE = "continue"  # the multi-task adapter as it is (one shared LoRA)
  FRESH = "fresh"  # a freshly initialised adapter of `adapt_kind` on the backbone
  BACKBONE = "backbone"  # the backbone alone, no adapter


_ROUTED = frozenset({Role.SKILLS, Role.ROUTING})


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the method table (see the module docstring).

  Attributes:
    name: the method's name (`--method`, configs/methods/<name>.gin).
    adaptation: how the adaptation parameters are built.
    adapt_trains: the roles trained when adapting to a held-out task.
    adapt_kind: the `AdapterConfig.kind` of a `FRESH` adapter.
    multitask: what the multi-task stage trains; None: no multi-task stage.
    multitask_trains: the roles trained in the multi-task stage.
    heads: routing heads (routed methods only).
  """

  name: str
  _: dataclasses.KW_ONLY
  adaptation: Adaptation
  adapt_trains: frozenset[Role]
  adapt_kind: Optional[str] = None
  multitask: Optional[Multitask] = None
  multitask_trains: frozenset[Role] = frozenset()
  heads: Optional[Heads] = None

  def __post_init__(self):
    for field in ("adapt_trains", "multitask_trains"):
      object.__setattr__(self, field, frozenset(Role(r) for r in getattr(self, field)))
    if (self.adaptation is Adaptation.FRESH) != (self.adapt_kind is not None):
      raise ValueError(f"method {self.name!r}: adapt_kind names the kind of a FRESH adapter "
                       f"and nothing else; got adaptation={self.adaptation}, "
                       f"adapt_kind={self.adapt_kind!r}")
    if (self.multitask is Multitask.ROUTED_SKILLS) != (self.heads is not None):
      raise ValueError(f"method {self.name!r}: heads is set for routed multi-task methods "
                       f"only; got multitask={self.multitask}, heads={self.heads}")

  def trains(self, stage: str) -> frozenset:
    """The roles trained in `stage` ('multitask' or 'adapt')."""
    if stage == "adapt":
      return self.adapt_trains
    if stage != "multitask":
      raise errors.ConfigError(f"stage={stage!r} trains no parameters; stages that train: "
                       "['multitask', 'adapt']")
    if self.multitask is None:
      with_stage = [n for n, m in METHODS.items() if m.multitask is not None]
      raise errors.ConfigError(f"method {self.name!r} trains a fresh adapter per held-out task and has "
                       f"no multi-task stage; multi-task methods: {with_stage}")
    return self.multitask_trains


def _routed(name: str, heads: Heads, adaptation: Adaptation, adapt_trains) -> Method:
  """A Poly/MHR method: the multi-task stage trains skills and routing."""
  return Method(name, multitask=Multitask.ROUTED_SKILLS, heads=heads, multitask_trains=_ROUTED,
                adaptation=adaptation, adapt_trains=adapt_trains)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("lora", adaptation=Adaptation.FRESH, adapt_kind="lora", adapt_trains={Role.LORA}),
    Method("shared_lora", multitask=Multitask.SHARED_LORA, multitask_trains={Role.LORA},
           adaptation=Adaptation.CONTINUE, adapt_trains={Role.LORA}),
    Method("shared_ia3", multitask=Multitask.SHARED_IA3, multitask_trains={Role.IA3},
           adaptation=Adaptation.CONTINUE, adapt_trains={Role.IA3}),
    _routed("poly", Heads.ONE, Adaptation.NEW_ROUTING, adapt_trains=_ROUTED),
    _routed("mhr", Heads.MANY, Adaptation.NEW_ROUTING, adapt_trains=_ROUTED),
    _routed("poly_z", Heads.ONE, Adaptation.NEW_ROUTING, adapt_trains={Role.ROUTING}),
    _routed("mhr_z", Heads.MANY, Adaptation.NEW_ROUTING, adapt_trains={Role.ROUTING}),
    _routed("poly_mu", Heads.ONE, Adaptation.MU, adapt_trains={Role.LORA}),
    _routed("mhr_mu", Heads.MANY, Adaptation.MU, adapt_trains={Role.LORA}),
    Method("ia3", adaptation=Adaptation.FRESH, adapt_kind="ia3", adapt_trains={Role.IA3}),
    Method("full", multitask=Multitask.BACKBONE, multitask_trains={Role.BACKBONE},
           adaptation=Adaptation.BACKBONE, adapt_trains={Role.BACKBONE}),
)}


def _choice(kind: str, value, valid) -> None:
  if value not in valid:
    raise errors.ConfigError(f"{kind}={value!r} is not supported; valid choices: {list(valid)}")


def get_method(name: str) -> Method:
  _choice("method", name, METHODS)
  return METHODS[name]


# --- Trained roles and masks ------------------------------------------------------


def trained_roles(method: str, stage: str = "adapt", train_backbone: bool = False) -> frozenset:
  roles = get_method(method).trains(stage)
  return roles | {Role.BACKBONE} if train_backbone else roles


def trainable_predicate(method: str, stage: str = "adapt",
                        train_backbone: bool = False) -> Callable[[str], bool]:
  """path ('a/b/kernel') -> whether `method` trains it in `stage` ('multitask' | 'adapt')."""
  roles = trained_roles(method, stage, train_backbone)
  return lambda path: param_tree.role_of(path) in roles


def trainable_mask(method: str, params, stage: str = "adapt",
                   train_backbone: bool = False) -> Any:
  """A pytree of bools shaped like `params`: True where `method` trains."""
  return param_tree.map_paths(trainable_predicate(method, stage, train_backbone), params)


def count_parameters(params, mask: Union[None, Callable[[str], bool], Any] = None) -> int:
  """Number of scalars in `params` (where `mask` — a path predicate or a bool tree — is True)."""
  flat = param_tree.flatten(params)
  if mask is None:
    keep = lambda path: True
  elif callable(mask):
    keep = mask
  else:
    keep = param_tree.flatten(mask).__getitem__
  return int(sum(int(np.size(x)) for path, x in flat.items() if keep(path)))


# --- Multi-task stage ------------------------------------------------------------


def multitask_adapter_config(method: str, base: AdapterConfig, n_tasks: int
                             ) -> Optional[AdapterConfig]:
  """The adapter trained in the multi-task stage (None for 'full': the bare backbone).

  Poly methods force n_heads=1 (Poly is MHR with one head); MHR methods
  need `base.n_heads > 1`.
  """
  m = get_method(method)
  m.trains("multitask")  # raises for methods without the stage
  if m.multitask is Multitask.BACKBONE:
    return None
  if m.multitask is Multitask.SHARED_LORA:
    return base.replace(kind="lora", shared_routing=False, straight_through=False)
  if m.multitask is Multitask.SHARED_IA3:
    return base.replace(kind="ia3", target_modules=base.ia3_target_modules,
                        shared_routing=False, straight_through=False)
  n_heads = 1 if m.heads is Heads.ONE else base.n_heads
  if m.heads is Heads.MANY and n_heads < 2:
    raise errors.ConfigError(f"method {method!r} is multi-head routing and needs n_heads > 1, got "
                     f"n_heads={n_heads}; set AdapterConfig.n_heads or use "
                     f"{method.replace('mhr', 'poly')!r}")
  return base.replace(kind="poly", n_heads=n_heads, n_tasks=n_tasks)


# --- Building adaptation parameters ----------------------------------------------


def strip_adapters(params) -> dict:
  """The backbone alone: drops every adapter and router parameter."""
  return param_tree.unflatten({k: v for k, v in param_tree.flatten(params).items()
                               if not param_tree.is_adapter_path(k)})


def add_fresh_adapters(backbone, config: AdapterConfig, rng: jax.Array) -> dict:
  """Adds a freshly initialised LoRA or (IA)^3 to every kernel `config` targets.

  Initialised as the model would (LoRA A per `config.lora_init`, B = 0; (IA)^3
  ones); a leading scanned-layers axis gets independent draws per layer.
  """
  if config.kind not in ("lora", "ia3"):
    raise errors.ConfigError(f"fresh adapters are built for kind 'lora' or 'ia3', got {config.kind!r}")
  flat = param_tree.flatten(backbone)
  out = dict(flat)
  for i, (path, kernel) in enumerate(sorted(flat.items())):
    module, leaf = path.rsplit("/", 1) if "/" in path else ("", path)
    if leaf != "kernel" or not config.targets(module):
      continue
    lead, (d_in, d_out) = kernel.shape[:-2], kernel.shape[-2:]
    dtype = jnp.dtype(config.param_dtype)  # the adapter's, not the (frozen) kernel's
    ad = param_tree.adapter_prefix(module)
    if config.kind == "lora":
      bound = lora_a_bound(config.lora_init, d_in)
      out[ad + "lora_a"] = jax.random.uniform(
          jax.random.fold_in(rng, i), lead + (d_in, config.rank), jnp.float32, -bound,
          bound).astype(dtype)
      out[ad + "lora_b"] = jnp.zeros(lead + (config.rank, d_out), dtype)
    else:
      width = d_in if config.is_ia3_feedforward(module) else d_out
      out[ad + "ia3_scale"] = jnp.ones(lead + (width,), dtype)
  return param_tree.unflatten(out)


def mean_routing_weights(routing_logits: jax.Array, config: AdapterConfig) -> jax.Array:
  """w̄ [..., h, s]: evaluation routing weights averaged over the tasks (axis -3)."""
  return routing_weights(jnp.asarray(routing_logits), deterministic=True,
                         straight_through=config.straight_through).mean(axis=-3)


def mu_params(multitask_params, config: AdapterConfig, average: str = "uniform"
              ) -> tuple[AdapterConfig, dict]:
  """Poly/MHR parameters -> (LoRA config, params): each inventory averaged into one LoRA.

  average: 'uniform' (the paper's Poly-μ/MHR-μ: plain mean of the skills) or
  'routing' (weighted by the training tasks' mean routing weights).
  The LoRA keeps the rank, the scaling and the targets.
  """
  _choice("mu_average", average, MU_AVERAGES)
  if config is None or config.kind != "poly":
    raise errors.ConfigError("μ-averaging needs a Poly/MHR multi-task adapter (kind='poly'), got "
                     f"{None if config is None else config.kind!r}")
  flat = param_tree.flatten(multitask_params)
  out = {k: v for k, v in flat.items() if param_tree.role_of(k) not in _ROUTED}
  for projection in param_tree.adapted_projections(flat):
    prefix = param_tree.adapter_prefix(projection)
    skill_a = jnp.asarray(flat[prefix + "skill_lora_a"])
    skill_b = jnp.asarray(flat[prefix + "skill_lora_b"])
    h, s = skill_a.shape[-4:-2]
    if average == "uniform":
      weights = jnp.full((h, s), 1.0 / s, jnp.float32)
    else:
      weights = mean_routing_weights(param_tree.routing_logits_of(flat, projection), config)
    a, b = mix_skills(weights.astype(jnp.float32), skill_a.astype(jnp.float32),
                      skill_b.astype(jnp.float32))
    out[prefix + "lora_a"] = a.astype(skill_a.dtype)
    out[prefix + "lora_b"] = b.astype(skill_b.dtype)
  lora = AdapterConfig(kind="lora", rank=config.rank, scaling=config.scale,
                       target_modules=config.target_modules, dropout=config.dropout,
                       ia3_feedforward=config.ia3_feedforward,
                       param_dtype=config.param_dtype)
  return lora, param_tree.unflatten(out)


def new_routing_rows(multitask_params, n_new_tasks: int = 1, routing_init: str = "uniform",
                     rng: Optional[jax.Array] = None) -> dict:
  """Replaces every Z [..., tasks, h, s] by [..., n_new_tasks, h, s] for the new tasks.

  routing_init: 'uniform' (U(-1e-3, 1e-3), as a fresh router) or 'mean'
  (the mean of the training tasks' rows).
  """
  _choice("routing_init", routing_init, ROUTING_INITS)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  flat = param_tree.flatten(multitask_params)
  for i, (path, z) in enumerate(sorted(flat.items())):
    if not param_tree.is_routing_path(path):
      continue
    z = jnp.asarray(z)
    shape = z.shape[:-3] + (n_new_tasks,) + z.shape[-2:]
    if routing_init == "mean":
      flat[path] = jnp.broadcast_to(z.mean(axis=-3, keepdims=True), shape).astype(z.dtype)
    else:
      flat[path] = jax.random.uniform(jax.random.fold_in(rng, i), shape, z.dtype,
                                      -INIT_RANGE, INIT_RANGE)
  return param_tree.unflatten(flat)


def _check_routed(method: Method, config: Optional[AdapterConfig]) -> None:
  if config is None or config.kind != "poly":
    raise errors.ConfigError(f"method {method.name!r} adapts a Poly/MHR multi-task checkpoint "
                     f"(kind='poly'), got adapter kind "
                     f"{None if config is None else config.kind!r}")
  if (config.n_heads == 1) != (method.heads is Heads.ONE):
    family = "poly*" if config.n_heads == 1 else "mhr*"
    raise errors.ConfigError(f"method {method.name!r} does not fit a checkpoint with "
                     f"n_heads={config.n_heads}; use a {family} method")


def init_adaptation_params(method: str, multitask_params, adapter_config: Optional[AdapterConfig],
                           n_new_tasks: int = 1, routing_init: str = "uniform",
                           rng: Optional[jax.Array] = None, *, mu_average: str = "uniform",
                           base_config: Optional[AdapterConfig] = None
                           ) -> tuple[Optional[AdapterConfig], dict]:
  """Builds (adapter config, full params) to adapt to new task(s) from multi-task params.

  Args:
    method: a name of `METHODS`.
    multitask_params: the multi-task stage's parameters (backbone + adapters).
    adapter_config: the multi-task stage's adapter config (None for 'full').
    n_new_tasks: rows of the new routing table (the new tasks get ids 0..n-1).
    routing_init: new routing rows: 'uniform' or 'mean' (of the training rows).
    rng: for new routing rows and fresh adapters.
    mu_average: 'uniform' (the paper's) or 'routing', for *_mu methods.
    base_config: the adapter of 'lora' / 'ia3' (fresh adapters); default:
      the multi-task rank, scaling, targets for LoRA, PEFT's T5 targets
      (k, v, wo) for (IA)^3.

  Returns:
    The adapter config for `T5(..., adapter=...)` and the complete params.
  """
  m = get_method(method)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  if m.adaptation is Adaptation.NEW_ROUTING:
    _check_routed(m, adapter_config)
    return (adapter_config.replace(n_tasks=n_new_tasks),
            new_routing_rows(multitask_params, n_new_tasks, routing_init, rng))
  if m.adaptation is Adaptation.MU:
    _check_routed(m, adapter_config)
    return mu_params(multitask_params, adapter_config, mu_average)
  if m.adaptation is Adaptation.CONTINUE:
    shared_kind = "ia3" if m.multitask is Multitask.SHARED_IA3 else "lora"
    if adapter_config is not None and adapter_config.kind == shared_kind:
      return adapter_config, param_tree.unflatten(param_tree.flatten(multitask_params))
    if (adapter_config is not None and adapter_config.kind == "poly"
        and adapter_config.n_skills == 1):
      return mu_params(multitask_params, adapter_config, "uniform")
    raise errors.ConfigError("method 'shared_lora' adapts a multi-task checkpoint of one shared LoRA "
                     "(kind='lora', or poly with n_skills=1), got adapter "
                     f"{None if adapter_config is None else adapter_config.kind!r}")
  backbone = strip_adapters(multitask_params)
  if m.adaptation is Adaptation.BACKBONE:
    return None, backbone
  # Fresh LoRA / (IA)^3 on the backbone.
  if base_config is not None and base_config.kind == m.adapt_kind:
    config = base_config
  elif m.adapt_kind == "ia3":
    src = base_config or adapter_config or AdapterConfig()
    config = AdapterConfig(kind="ia3", target_modules=src.ia3_target_modules,
                           param_dtype=src.param_dtype)
  else:
    src = base_config or adapter_config or AdapterConfig()
    config = AdapterConfig(kind="lora", rank=src.rank, scaling=src.scale,
                           target_modules=src.target_modules, dropout=src.dropout,
                           lora_init=src.lora_init, param_dtype=src.param_dtype)
  return config, add_fresh_adapters(backbone, config, rng)
