"""Device mesh, logical axis rules, and the shardings of parameters and batches.

Every parameter is created with `nn.with_logical_partitioning`, so it names
its axes with *logical* names ('embed', 'mlp', 'skills', ...). One table of
rules (`DEFAULT_RULES`) maps each logical name to a *mesh* axis ('data' or
'model') or to None (replicated); changing the layout means changing the
table, never the model.

Mesh: 2-D, axes ('data', 'model').
  data   the batch is split over it (data parallelism).
  model  large weight dimensions (vocab, mlp, heads * d_kv) are split over it
         (tensor / model parallelism, as in t5x and Megatron).

Typical use:

    mesh = make_mesh(data=-1, model=1)
    variables, shardings = init_sharded(
        lambda rng: model.init(rng, enc, dec), mesh, DEFAULT_RULES, rng)
    batch = shard_batch(host_batch, mesh)    # [batch, ...] split over 'data'
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "model")

LogicalRules = Sequence[tuple[str, Optional[str | tuple[str, ...]]]]

# Logical axis name -> mesh axis (None: replicated). When two names of one
# array map to the same mesh axis, the earlier rule wins and the later name is
# replicated (flax's priority order). Names missing from the table are
# replicated, so a new adapter axis never breaks sharding.
DEFAULT_RULES: tuple[tuple[str, Optional[str]], ...] = (
    # Activations.
    ("batch", "data"),
    ("length", None),
    # Backbone parameters (t5x's 1-D model parallelism).
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("joined_kv", "model"),
    ("kv", None),
    ("embed", None),
    ("relpos_buckets", None),
    ("layers", None),  # the stacked axis of scanned layers
    # Adapters: routing tables and skill inventories are small, so they are
    # replicated. LoRA A [in, rank] and B [rank, out] reuse the base kernel's
    # in/out names and so follow its sharding; only the rank is replicated.
    # (mhr_jax.adapters.routing.ADAPTER_AXES; a test keeps the two in step.)
    ("tasks", None),
    ("routing_heads", None),  # MHR heads ("splits" in PEFT)
    ("skills", None),
    ("lora_rank", None),
)

_logged_fallbacks: set[tuple] = set()


def make_mesh(data: int = -1, model: int = 1,
              devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """A ('data', 'model') mesh over `devices` (default: all devices).

  Args:
    data: size of the data-parallel axis; -1 takes all devices left over
      after `model`.
    model: size of the model-parallel axis.
    devices: the devices to lay out; all of them are used.
  Raises:
    ValueError: if the sizes are not positive or do not multiply to the
      number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  if model < 1 or (data < 1 and data != -1):
    raise ValueError(f"mesh sizes must be positive (data may be -1 for 'the rest'); "
                     f"got data={data}, model={model}")
  if data == -1:
    if n % model:
      raise ValueError(f"model={model} does not divide the {n} available devices; "
                       f"choose a model size among the divisors of {n}")
    data = n // model
  if data * model != n:
    raise ValueError(f"mesh data={data} x model={model} = {data * model} devices, "
                     f"but {n} devices are available; sizes must multiply to {n} "
                     f"(data=-1 fills the rest)")
  # Auto axes: XLA propagates shardings from the parameters and batch (t5x /
  # GSPMD style), rather than jax's explicit sharding-in-types mode.
  return jax.make_mesh((data, model), MESH_AXES, axis_types=(AxisType.Auto,) * 2,
                       devices=devices)


def _is_box(x: Any) -> bool:
  return isinstance(x, meta.AxisMetadata)


def _unbox(x: Any) -> Any:
  """Removes partitioning boxes without adding sharding constraints."""
  def leaf(v):
    if isinstance(v, meta.Partitioned):
      return v.unbox(apply_constraint=False)
    return v.unbox() if _is_box(v) else v
  return jax.tree.map(leaf, x, is_leaf=_is_box)


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh,
              logical: PartitionSpec, path: str) -> PartitionSpec:
  """Replicates the dims of `spec` that the mesh cannot split evenly.

  jit refuses a sharding whose mesh axes do not divide the dimension (e.g.
  2 routing heads over model=4); such a dim is replicated instead, and the
  fallback is logged once per (logical name, size, mesh axes).
  """
  fitted = []
  for dim, axes in enumerate(tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    # A rule may name a mesh axis this mesh lacks: treat it as replicated.
    names = tuple(a for a in names if a in mesh.shape)
    size = math.prod(mesh.shape[a] for a in names)
    if names and shape[dim] % size:
      logical_name = logical[dim] if dim < len(logical) else None
      key = (logical_name, shape[dim], names)
      if key not in _logged_fallbacks:
        _logged_fallbacks.add(key)
        logging.info("replicating dim %d (%r, size %d) of %s: not divisible by mesh "
                     "axes %s of size %d", dim, logical_name, shape[dim], path, names, size)
      names = ()
    fitted.append(None if not names else names[0] if len(names) == 1 else names)
  while fitted and fitted[-1] is None:
    fitted.pop()
  return PartitionSpec(*fitted)


def param_shardings(variables: Any, mesh: Mesh,
                    rules: LogicalRules = DEFAULT_RULES) -> Any:
  """NamedShardings for a (boxed or abstract) variable tree.

  Args:
    variables: e.g. `jax.eval_shape(model.init, ...)` — leaves are
      `nn.LogicallyPartitioned` boxes of arrays or ShapeDtypeStructs; plain
      (unboxed) leaves with a shape are replicated.
    mesh: from `make_mesh`.
    rules: logical name -> mesh axis.
  Returns:
    A tree shaped like the *unboxed* variables, one `NamedSharding` a leaf.
  """
  logical = nn.get_partition_spec(variables)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  mesh_specs = jax.tree.leaves(nn.logical_to_mesh(logical, rules), is_leaf=is_spec)
  flat_logical = jax.tree.leaves(logical, is_leaf=is_spec)
  flat_shapes, treedef = jax.tree_util.tree_flatten_with_path(_unbox(variables))
  if not len(flat_logical) == len(mesh_specs) == len(flat_shapes):
    raise ValueError("variables hold leaves without a shape; expected arrays or "
                     "ShapeDtypeStructs (boxed or not)")
  fitted = [
      NamedSharding(mesh, _fit_spec(spec, x.shape, mesh, names,
                                    jax.tree_util.keystr(path, simple=True, separator="/")))
      for names, spec, (path, x) in zip(flat_logical, mesh_specs, flat_shapes)]
  return jax.tree_util.tree_unflatten(treedef, fitted)


def init_sharded(init_fn: Callable[..., Any], mesh: Mesh, rules: LogicalRules,
                 *args) -> tuple[Any, Any]:
  """Initialises variables directly in their sharded layout.

  The shapes come from `jax.eval_shape(init_fn, *args)`, so no full copy of
  the parameters ever exists on one device.

  Args:
    init_fn: e.g. `lambda rng: model.init(rng, enc_tokens, dec_tokens)`.
    mesh, rules: the layout.
    *args: passed to `init_fn` (rng keys, example inputs).
  Returns:
    (variables, shardings): the unboxed variables placed on `mesh`, and the
    matching tree of `NamedSharding`.
  """
  abstract = jax.eval_shape(init_fn, *args)
  shardings = param_shardings(abstract, mesh, rules)
  variables = jax.jit(lambda *a: _unbox(init_fn(*a)), out_shardings=shardings)(*args)
  return variables, shardings


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of a value every device holds whole (scalars, metrics)."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) dimension over 'data'; other dims replicated."""
  return NamedSharding(mesh, PartitionSpec("data"))


def _check_feature(name: str, value: np.ndarray, rows_per_shard_divisor: int) -> None:
  if value.dtype.kind not in "biuf":
    raise TypeError(f"batch feature {name!r} has dtype {value.dtype}; only numeric "
                    "features can be placed on devices (convert or drop it first)")
  if value.ndim == 0:
    raise ValueError(f"batch feature {name!r} is a scalar; features need a leading "
                     "batch dimension")
  if value.shape[0] % rows_per_shard_divisor:
    raise ValueError(f"batch feature {name!r} has {value.shape[0]} rows, not divisible "
                     f"by {rows_per_shard_divisor} data shards")


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a host batch on `mesh`, each feature [batch, ...] split over 'data'.

  With several processes, `batch` is this process's part of the global batch
  (see `host_local_batch_to_global`).
  """
  if jax.process_count() > 1:
    return host_local_batch_to_global(batch, mesh)
  sharding = batch_sharding(mesh)
  out = {}
  for name, value in batch.items():
    value = np.asarray(value)
    _check_feature(name, value, mesh.shape["data"])
    out[name] = jax.device_put(value, sharding)
  return out


def host_local_batch_to_global(batch: Mapping[str, np.ndarray],
                               mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles each process's rows into one global array per feature.

  Process p holds rows [p * local, (p + 1) * local) of the global batch, the
  rows its devices own along 'data' (read them with `process_shard_info`).
  """
  sharding = batch_sharding(mesh)
  # The rows of this process are split again over its own positions on 'data'.
  data_dim = mesh.axis_names.index("data")
  local_shards = len({index[data_dim] for index, device in np.ndenumerate(mesh.devices)
                      if device.process_index == jax.process_index()})
  out = {}
  for name, value in batch.items():
    value = np.asarray(value)
    _check_feature(name, value, max(1, local_shards))
    out[name] = jax.make_array_from_process_local_data(sharding, value)
  return out


def process_shard_info() -> tuple[int, int]:
  """(process_index, process_count): which shard of the data this process reads."""
  return jax.process_index(), jax.process_count()


def maybe_initialize_distributed(coordinator_address: Optional[str] = None,
                                 num_processes: Optional[int] = None,
                                 process_id: Optional[int] = None,
                                 auto_detect: bool = False) -> bool:
  """Connects the processes of a multi-host job (call before any other jax use).

  A no-op (returning False) for a single-process run: nothing given and
  `auto_detect` False. `auto_detect=True` lets jax read the cluster
  environment (TPU pods, SLURM, ...). Returns True when distributed.
  """
  if jax.distributed.is_initialized():
    return True
  configured = any(v is not None for v in (coordinator_address, num_processes, process_id))
  if not configured and not auto_detect:
    return False
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  return True


@contextlib.contextmanager
def sharding_context(mesh: Mesh, rules: LogicalRules = DEFAULT_RULES) -> Iterator[None]:
  """Makes `mesh` and `rules` current, so `with_sharding_constraint` takes effect."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield


def with_sharding_constraint(x: jax.Array, logical_axes: Sequence[Optional[str]]) -> jax.Array:
  """Constrains an activation's layout by logical names, e.g. ('batch', 'length', 'embed').

  Uses the rules of the enclosing `sharding_context`; without one it is a
  no-op, so model code can call it unconditionally.
  """
  return nn.with_logical_constraint(x, PartitionSpec(*logical_axes))


def place_on_mesh(tree: Any, mesh: Mesh) -> Any:
  """Keeps leaves already laid out on `mesh`; replicates every other leaf over it.

  A train state mixes parameters sharded by `init_sharded` with scalars
  (step, rng) created on one device; giving every leaf a mesh sharding keeps
  the jitted step's input and output layouts equal, so it compiles once.
  """
  rep = replicated(mesh)

  def place(x):
    s = getattr(x, "sharding", None)
    if isinstance(s, NamedSharding) and s.mesh == mesh:
      return x
    return jax.device_put(x, rep)

  return jax.tree_util.tree_map(place, tree)
