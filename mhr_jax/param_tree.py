"""Parameter trees: '/'-joined paths, flattening, and the role of every leaf.

Paths join the dict keys of a nested parameter tree with '/':
'encoder/layers_0/attention/query/kernel'. `flatten` / `unflatten` convert
between the nested tree (boxed or not, frozen or not) and {path: array}.

Each leaf name belongs to one `Role`, declared by the module that creates it
(`@declare_roles(lora_a=Role.LORA, ...)` on the flax module class), as PEFT's
tuners list their parameter names in their layer classes. A leaf name has one
owner: declaring it twice raises, and a leaf nobody declared is an error
(`role_of`), never silently the backbone.

Where adapters sit (the layout written by `AdaptedDense` and the routers):
  <projection>/kernel                          the backbone kernel [in, out]
  <projection>/adapter/<leaf>                  its adapter (lora_a, skill_lora_a, ia3_scale, ...)
  <projection>/adapter/router/routing_logits   its own routing table Z [tasks, h, s]
  router/routing_logits                        the one Z of `shared_routing`
"""

from __future__ import annotations

import enum
import functools
import importlib
import types
from typing import Any, Callable, Mapping

import flax
import jax

SEP = "/"
ADAPTER = "adapter"  # the child module holding a projection's adapter
ROUTER_LOGITS = "router/routing_logits"  # Z below a router's parent; at the root: shared


class Role(str, enum.Enum):
  """What a parameter is; the methods train sets of roles (see adapters/methods.py)."""

  BACKBONE = "backbone"  # T5's own weights
  ROUTING = "routing"  # routing logits Z
  SKILLS = "skills"  # a Poly/MHR skill inventory Φ
  LORA = "lora"  # one LoRA
  IA3 = "ia3"  # (IA)^3 scaling vectors


_ROLES: dict[str, Role] = {}
_OWNERS: dict[str, str] = {}
# The modules whose classes declare leaves. They import this module (to
# declare), so it imports them only when first asked about a leaf.
_DECLARING_MODULES = ("mhr_jax.models.t5", "mhr_jax.adapters.layers")


def declare_roles(**leaves: Role) -> Callable[[type], type]:
  """Class decorator: the flax module creates parameters with these leaf names and roles."""

  def register(cls: type) -> type:
    owner = f"{cls.__module__}.{cls.__qualname__}"
    for leaf in leaves:
      if _OWNERS.get(leaf, owner) != owner:
        raise ValueError(f"parameter name {leaf!r} is declared by {_OWNERS[leaf]} and again by "
                         f"{owner}; each leaf name needs one owner (rename one)")
    for leaf, role in leaves.items():
      _ROLES[leaf], _OWNERS[leaf] = Role(role), owner
    return cls

  return register


@functools.cache
def leaf_roles() -> Mapping[str, Role]:
  """{leaf name: role} of every declared parameter."""
  for module in _DECLARING_MODULES:
    importlib.import_module(module)
  return types.MappingProxyType(_ROLES)


def role_of(path: str) -> Role:
  """The role of the parameter at `path`, from its leaf name; raises for an undeclared one."""
  leaf = path.rsplit(SEP, 1)[-1]
  roles = leaf_roles()
  if leaf not in roles:
    raise ValueError(f"parameter {path!r} has an undeclared leaf name {leaf!r}; declared "
                     f"names: {sorted(roles)} (declare it with `declare_roles` on the module "
                     "that creates it)")
  return roles[leaf]


def is_routing_path(path: str) -> bool:
  return role_of(path) is Role.ROUTING


def is_adapter_path(path: str) -> bool:
  """Whether `path` is an adapter or router parameter (anything but the backbone)."""
  return role_of(path) is not Role.BACKBONE


# --- Paths and flattening --------------------------------------------------------


def flatten(params: Any) -> dict[str, Any]:
  """Nested tree (boxed or not, frozen or not) -> {'a/b/kernel': array}."""
  return flax.traverse_util.flatten_dict(dict(flax.core.meta.unbox(flax.core.unfreeze(params))),
                                         sep=SEP)


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{'a/b/kernel': array} -> nested dict."""
  return flax.traverse_util.unflatten_dict(dict(flat), sep=SEP)


def keypath_str(keypath) -> str:
  """A `jax.tree_util` key path -> 'a/b/kernel' (a box's attribute key adds no name)."""
  return SEP.join(str(k.key) for k in keypath if isinstance(k, jax.tree_util.DictKey))


def map_paths(fn: Callable[[str], Any], params: Any) -> Any:
  """A tree shaped like `params` with fn(path) at every leaf."""
  return jax.tree_util.tree_map_with_path(lambda kp, _: fn(keypath_str(kp)), params)


def adapter_prefix(projection: str) -> str:
  """'encoder/layers_0/attention/query' -> 'encoder/layers_0/attention/query/adapter/'."""
  return f"{projection}{SEP}{ADAPTER}{SEP}"


def adapted_projections(flat: Mapping[str, Any]) -> list[str]:
  """The projections of a flat tree that carry an adapter, sorted."""
  marker = SEP + ADAPTER + SEP
  return sorted({p[:p.index(marker)] for p in flat if marker in p})


def routing_logits_of(flat: Mapping[str, Any], projection: str) -> Any:
  """A projection's Z [..., tasks, h, s]: its own router's, else the shared one."""
  own = flat.get(adapter_prefix(projection) + ROUTER_LOGITS)
  return own if own is not None else flat[ROUTER_LOGITS]
