"""The adaptation methods compared in the MHR paper, each selected by name.

Two stages (Caccia et al. 2023, §5): multi-task pre-training of the adapters
on the training tasks, then few-shot adaptation to each held-out task. A
method says what each stage trains and how the adaptation parameters are
built from the multi-task ones:

  name         multi-task stage            adaptation: parameters     trained
  lora         -                           fresh LoRA on the backbone  lora_a/b
  shared_lora  one LoRA for all tasks      that LoRA                   lora_a/b
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

Parameters are told apart by their leaf names: `routing_logits` (routing),
`skill_lora_a/b` (skills), `lora_a/b`, `ia3_scale`; anything else is the
backbone. Paths are '/'-joined ('encoder/layers_0/attention/query/kernel').
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, Optional, Union

import flax
import jax
import jax.numpy as jnp
import numpy as np

from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.adapters.poly import mix_skills
from mhr_jax.adapters.routing import INIT_RANGE, routing_weights

ROUTING_LEAVES = ("routing_logits",)
SKILL_LEAVES = ("skill_lora_a", "skill_lora_b")
LORA_LEAVES = ("lora_a", "lora_b")
IA3_LEAVES = ("ia3_scale",)
GROUPS = ("routing", "skills", "lora", "ia3", "backbone")
STAGES = ("multitask", "adapt")
ROUTING_INITS = ("uniform", "mean")
MU_AVERAGES = ("uniform", "routing")


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the method table.

  Attributes:
    name: the method's name.
    multitask: what the multi-task stage trains: 'poly', 'lora' (one shared
      LoRA), 'full' (the backbone), or None (no multi-task stage).
    heads: 'one' (Poly), 'many' (MHR) or None (not routed).
    adaptation: how the adaptation parameters are built: 'new_routing',
      'mu', 'shared_lora', 'fresh' (a new adapter of kind `adapt_kind` on the
      backbone), 'backbone' (no adapter).
    adapt_kind: the adapter kind during adaptation (None: no adapter).
    multitask_trains / adapt_trains: trained parameter groups (of `GROUPS`).
  """

  name: str
  multitask: Optional[str]
  heads: Optional[str]
  adaptation: str
  adapt_kind: Optional[str]
  multitask_trains: frozenset
  adapt_trains: frozenset


def _method(name, multitask, heads, adaptation, adapt_kind, multitask_trains, adapt_trains):
  return Method(name, multitask, heads, adaptation, adapt_kind, frozenset(multitask_trains),
                frozenset(adapt_trains))


_ROUTED = ("skills", "routing")
METHODS: dict[str, Method] = {m.name: m for m in (
    _method("lora", None, None, "fresh", "lora", (), ("lora",)),
    _method("shared_lora", "lora", None, "shared_lora", "lora", ("lora",), ("lora",)),
    _method("poly", "poly", "one", "new_routing", "poly", _ROUTED, _ROUTED),
    _method("mhr", "poly", "many", "new_routing", "poly", _ROUTED, _ROUTED),
    _method("poly_z", "poly", "one", "new_routing", "poly", _ROUTED, ("routing",)),
    _method("mhr_z", "poly", "many", "new_routing", "poly", _ROUTED, ("routing",)),
    _method("poly_mu", "poly", "one", "mu", "lora", _ROUTED, ("lora",)),
    _method("mhr_mu", "poly", "many", "mu", "lora", _ROUTED, ("lora",)),
    _method("ia3", None, None, "fresh", "ia3", (), ("ia3",)),
    _method("full", "full", None, "backbone", None, ("backbone",), ("backbone",)),
)}


def _choice(kind: str, value, valid) -> None:
  if value not in valid:
    raise ValueError(f"{kind}={value!r} is not supported; valid choices: {list(valid)}")


def get_method(name: str) -> Method:
  _choice("method", name, METHODS)
  return METHODS[name]


# --- Parameter groups and masks -----------------------------------------------


def param_group(path: str) -> str:
  """'routing' | 'skills' | 'lora' | 'ia3' | 'backbone', from the leaf name of `path`."""
  leaf = path.rsplit("/", 1)[-1]
  if leaf in ROUTING_LEAVES:
    return "routing"
  if leaf in SKILL_LEAVES:
    return "skills"
  if leaf in LORA_LEAVES:
    return "lora"
  if leaf in IA3_LEAVES:
    return "ia3"
  return "backbone"


def trained_groups(method: str, stage: str = "adapt", train_backbone: bool = False) -> frozenset:
  m = get_method(method)
  _choice("stage", stage, STAGES)
  if stage == "multitask":
    if m.multitask is None:
      with_stage = [n for n, k in METHODS.items() if k.multitask is not None]
      raise ValueError(f"method {method!r} trains a fresh adapter per held-out task and has no "
                       f"multi-task stage; multi-task methods: {with_stage}")
    groups = m.multitask_trains
  else:
    groups = m.adapt_trains
  return groups | {"backbone"} if train_backbone else groups


def trainable_predicate(method: str, stage: str = "adapt",
                        train_backbone: bool = False) -> Callable[[str], bool]:
  """path ('a/b/kernel') -> whether `method` trains it in `stage` ('multitask' | 'adapt')."""
  groups = trained_groups(method, stage, train_backbone)
  return lambda path: param_group(path) in groups


def _path(keypath) -> str:
  # Dict keys only: a boxed leaf (nn.Partitioned) adds an attribute key, not a name.
  return "/".join(str(k.key) for k in keypath if isinstance(k, jax.tree_util.DictKey))


def _map_paths(fn: Callable[[str], Any], params) -> Any:
  return jax.tree_util.tree_map_with_path(lambda kp, _: fn(_path(kp)), params)


def trainable_mask(method: str, params, stage: str = "adapt",
                   train_backbone: bool = False) -> Any:
  """A pytree of bools shaped like `params`: True where `method` trains."""
  return _map_paths(trainable_predicate(method, stage, train_backbone), params)


def count_parameters(params, mask: Union[None, Callable[[str], bool], Any] = None) -> int:
  """Number of scalars in `params` (where `mask` — a path predicate or a bool tree — is True)."""
  params = flax.core.meta.unbox(params)
  if mask is None:
    mask = lambda path: True
  mask = _map_paths(mask, params) if callable(mask) else flax.core.meta.unbox(mask)
  sizes = jax.tree.map(lambda x, m: int(np.size(x)) if m else 0, params, mask)
  return int(sum(jax.tree.leaves(sizes)))


# --- Multi-task stage ------------------------------------------------------------


def multitask_adapter_config(method: str, base: AdapterConfig, n_tasks: int
                             ) -> Optional[AdapterConfig]:
  """The adapter trained in the multi-task stage (None for 'full': the bare backbone).

  Poly methods force n_heads=1 (Poly is MHR with one head); MHR methods
  need `base.n_heads > 1`.
  """
  m = get_method(method)
  trained_groups(method, "multitask")  # raises for methods without the stage
  if m.multitask == "full":
    return None
  if m.multitask == "lora":
    return base.replace(kind="lora", shared_routing=False, straight_through=False)
  n_heads = 1 if m.heads == "one" else base.n_heads
  if m.heads == "many" and n_heads < 2:
    raise ValueError(f"method {method!r} is multi-head routing and needs n_heads > 1, got "
                     f"n_heads={n_heads}; set AdapterConfig.n_heads or use "
                     f"{method.replace('mhr', 'poly')!r}")
  return base.replace(kind="poly", n_heads=n_heads, n_tasks=n_tasks)


# --- Building adaptation parameters ----------------------------------------------


def _flat(params) -> dict[str, Any]:
  params = flax.core.meta.unbox(flax.core.unfreeze(params))
  return flax.traverse_util.flatten_dict(dict(params), sep="/")


def _nested(flat: Mapping[str, Any]) -> dict:
  return flax.traverse_util.unflatten_dict(dict(flat), sep="/")


def _is_adapter_path(path: str) -> bool:
  parts = path.split("/")
  return parts[0] == "router" or "adapter" in parts[:-1]


def strip_adapters(params) -> dict:
  """The backbone alone: drops every `.../adapter/...` subtree and the shared `router`."""
  return _nested({k: v for k, v in _flat(params).items() if not _is_adapter_path(k)})


def _kaiming_uniform(key, shape, fan_in, dtype):
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound).astype(dtype)


def add_fresh_adapters(backbone, config: AdapterConfig, rng: jax.Array) -> dict:
  """Adds a freshly initialised LoRA or (IA)^3 to every kernel `config` targets.

  Initialised as the model would (LoRA A kaiming-uniform, B = 0; (IA)^3
  ones); a leading scanned-layers axis gets independent draws per layer.
  """
  if config.kind not in ("lora", "ia3"):
    raise ValueError(f"fresh adapters are built for kind 'lora' or 'ia3', got {config.kind!r}")
  flat = _flat(backbone)
  out = dict(flat)
  for i, (path, kernel) in enumerate(sorted(flat.items())):
    module, leaf = path.rsplit("/", 1) if "/" in path else ("", path)
    if leaf != "kernel" or not config.targets(module):
      continue
    lead, (d_in, d_out) = kernel.shape[:-2], kernel.shape[-2:]
    dtype = jnp.dtype(config.param_dtype)  # the adapter's, not the (frozen) kernel's
    if config.kind == "lora":
      out[f"{module}/adapter/lora_a"] = _kaiming_uniform(
          jax.random.fold_in(rng, i), lead + (d_in, config.rank), d_in, dtype)
      out[f"{module}/adapter/lora_b"] = jnp.zeros(lead + (config.rank, d_out), dtype)
    else:
      width = d_in if config.is_ia3_feedforward(module) else d_out
      out[f"{module}/adapter/ia3_scale"] = jnp.ones(lead + (width,), dtype)
  return _nested(out)


def _routing_logits_of(flat: Mapping[str, Any], adapter_prefix: str) -> jax.Array:
  """A projection's Z [..., tasks, h, s]: its own router's, else the shared one."""
  own = flat.get(f"{adapter_prefix}router/routing_logits")
  return own if own is not None else flat["router/routing_logits"]


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
    raise ValueError("μ-averaging needs a Poly/MHR multi-task adapter (kind='poly'), got "
                     f"{None if config is None else config.kind!r}")
  flat = _flat(multitask_params)
  out = {k: v for k, v in flat.items() if param_group(k) not in ("skills", "routing")}
  for path in flat:
    if not path.endswith("/skill_lora_a"):
      continue
    prefix = path[:-len("skill_lora_a")]
    skill_a, skill_b = jnp.asarray(flat[path]), jnp.asarray(flat[prefix + "skill_lora_b"])
    h, s = skill_a.shape[-4:-2]
    if average == "uniform":
      weights = jnp.full((h, s), 1.0 / s, jnp.float32)
    else:
      weights = mean_routing_weights(_routing_logits_of(flat, prefix), config)
    a, b = mix_skills(weights.astype(jnp.float32), skill_a.astype(jnp.float32),
                      skill_b.astype(jnp.float32))
    out[prefix + "lora_a"] = a.astype(skill_a.dtype)
    out[prefix + "lora_b"] = b.astype(skill_b.dtype)
  lora = AdapterConfig(kind="lora", rank=config.rank, scaling=config.scale,
                       target_modules=config.target_modules, dropout=config.dropout,
                       ia3_feedforward=config.ia3_feedforward,
                       param_dtype=config.param_dtype)
  return lora, _nested(out)


def new_routing_rows(multitask_params, n_new_tasks: int = 1, routing_init: str = "uniform",
                     rng: Optional[jax.Array] = None) -> dict:
  """Replaces every Z [..., tasks, h, s] by [..., n_new_tasks, h, s] for the new tasks.

  routing_init: 'uniform' (U(-1e-3, 1e-3), as a fresh router) or 'mean'
  (the mean of the training tasks' rows).
  """
  _choice("routing_init", routing_init, ROUTING_INITS)
  rng = jax.random.PRNGKey(0) if rng is None else rng
  flat = _flat(multitask_params)
  for i, (path, z) in enumerate(sorted(flat.items())):
    if param_group(path) != "routing":
      continue
    z = jnp.asarray(z)
    shape = z.shape[:-3] + (n_new_tasks,) + z.shape[-2:]
    if routing_init == "mean":
      flat[path] = jnp.broadcast_to(z.mean(axis=-3, keepdims=True), shape).astype(z.dtype)
    else:
      flat[path] = jax.random.uniform(jax.random.fold_in(rng, i), shape, z.dtype,
                                      -INIT_RANGE, INIT_RANGE)
  return _nested(flat)


def _check_routed(method: Method, config: Optional[AdapterConfig]) -> None:
  if config is None or config.kind != "poly":
    raise ValueError(f"method {method.name!r} adapts a Poly/MHR multi-task checkpoint "
                     f"(kind='poly'), got adapter kind "
                     f"{None if config is None else config.kind!r}")
  if (config.n_heads == 1) != (method.heads == "one"):
    family = "poly*" if config.n_heads == 1 else "mhr*"
    raise ValueError(f"method {method.name!r} does not fit a checkpoint with "
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
  if m.adaptation == "new_routing":
    _check_routed(m, adapter_config)
    return (adapter_config.replace(n_tasks=n_new_tasks),
            new_routing_rows(multitask_params, n_new_tasks, routing_init, rng))
  if m.adaptation == "mu":
    _check_routed(m, adapter_config)
    return mu_params(multitask_params, adapter_config, mu_average)
  if m.adaptation == "shared_lora":
    if adapter_config is not None and adapter_config.kind == "lora":
      return adapter_config, _nested(_flat(multitask_params))
    if (adapter_config is not None and adapter_config.kind == "poly"
        and adapter_config.n_skills == 1):
      return mu_params(multitask_params, adapter_config, "uniform")
    raise ValueError("method 'shared_lora' adapts a multi-task checkpoint of one shared LoRA "
                     "(kind='lora', or poly with n_skills=1), got adapter "
                     f"{None if adapter_config is None else adapter_config.kind!r}")
  backbone = strip_adapters(multitask_params)
  if m.adaptation == "backbone":
    return None, backbone
  # Fresh LoRA / (IA)^3 on the backbone.
  if base_config is not None and base_config.kind == m.adapt_kind:
    config = base_config
  elif m.adapt_kind == "ia3":
    src = base_config or adapter_config or AdapterConfig()
    config = AdapterConfig(kind="ia3", target_modules="ia3", param_dtype=src.param_dtype)
  else:
    src = base_config or adapter_config or AdapterConfig()
    config = AdapterConfig(kind="lora", rank=src.rank, scaling=src.scale,
                           target_modules=src.target_modules, dropout=src.dropout,
                           param_dtype=src.param_dtype)
  return config, add_fresh_adapters(backbone, config, rng)
