"""The Partitioner: the device mesh, the logical axis rules, and every placement.

Every parameter is created with `nn.with_logical_partitioning`, so it names
its axes with *logical* names ('embed', 'mlp', 'skills', ...). One table of
rules maps each logical name to a *mesh* axis ('data' or 'model') or to None
(replicated); changing the layout means changing the table, never the model.
`DEFAULT_RULES` is that table unless gin sets
`mhr_jax.MeshConfig.logical_axis_rules`.

Mesh: 2-D, axes ('data', 'model').
  data   the batch is split over it (data parallelism).
  model  large weight dimensions (vocab, mlp, heads * d_kv) are split over it
         (tensor / model parallelism, as in t5x and Megatron).

A `Partitioner` (t5x's idea) owns one mesh and one rule table, and is the
only path by which the stages place parameters, train states and batches,
and the only place that jits a step (with explicit input *and* output
shardings, so a state comes back in the layout it went in):

    partitioner = Partitioner(make_mesh(data=-1, model=2))
    params, shardings = partitioner.init(init_fn, rng)   # sharded from the start
    batch = partitioner.shard_batch(host_batch)          # [batch, ...] over 'data'
    step = partitioner.jit(fn, in_shardings=..., out_shardings=...)

Activations are not constrained: with the parameters and the batch laid out,
XLA's sharding propagation (GSPMD) places the activations in between.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Mapping, Optional, Sequence

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


def validate_rules(rules: LogicalRules) -> tuple[tuple[str, Optional[str | tuple[str, ...]]], ...]:
  """Normalises a rule table (gin hands over lists) and checks every rule.

  Raises:
    ValueError: `rules` is None, a rule is not a (logical name, mesh axis or
      None) pair, or a mesh axis is not one of MESH_AXES. (A name may repeat:
      flax takes the first of its rules whose mesh axis the array still has free.)
  """
  if rules is None:
    raise ValueError("logical axis rules are None; give a rule table "
                     "(mhr_jax.partitioning.DEFAULT_RULES is the default)")
  out = []
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"logical axis rule {rule!r} is not a (logical name, mesh axis) pair")
    name, axes = rule
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    bad = [a for a in names if a not in MESH_AXES]
    if bad:
      raise ValueError(f"logical axis rule {tuple(rule)!r} names mesh axis {bad[0]!r}; valid "
                       f"mesh axes: {list(MESH_AXES)} or None (replicated)")
    out.append((name, axes if axes is None or isinstance(axes, str) else tuple(axes)))
  return tuple(out)


def param_key(path: tuple) -> str:
  """A key path -> 'a/b/kernel' (how flat parameter dicts and logs name a leaf)."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def initializer_compiler_options(platform: str) -> dict[str, Any]:
  """XLA options for a program that draws initial parameters: it runs once.

  On CPU, LLVM at -O0. An initialiser is one threefry hash (and for normal
  draws an inverse-erf polynomial) per parameter, which XLA:CPU's LLVM backend
  otherwise spends most of its compile time optimising for a single run:
  configs/experiments/bigbench.gin's 160 leaves take 30.5 CPU-s at the default
  level, 11.3 at -O0 (`benchmarks/bigbench_setup.py` measures the cold start).
  Fixing the level also fixes the draws: the last bits of normal draws depend
  on it, and so no longer on XLA_FLAGS. Other platforms compile as configured.
  """
  return {"xla_backend_optimization_level": 0} if platform == "cpu" else {}


class Partitioner:
  """Owns one mesh and one rule table; places and jits everything of a stage.

  Attributes:
    mesh: the ('data', 'model') device mesh.
    rules: the logical axis rules, resolved once (never None).
  """

  def __init__(self, mesh: Mesh, rules: LogicalRules = DEFAULT_RULES):
    self.mesh = mesh
    self.rules = validate_rules(rules)

  @property
  def data_size(self) -> int:
    """Number of data-parallel shards: a global batch must be a multiple of it."""
    return int(self.mesh.shape["data"])

  def replicated(self) -> NamedSharding:
    """The sharding of a value every device holds whole (scalars, metrics, rng)."""
    return NamedSharding(self.mesh, PartitionSpec())

  def batch_sharding(self) -> NamedSharding:
    """Splits the leading (batch) dimension over 'data'; other dims replicated."""
    return NamedSharding(self.mesh, PartitionSpec("data"))

  def param_shardings(self, variables: Any) -> Any:
    """NamedShardings for a (boxed or abstract) variable tree.

    Args:
      variables: e.g. `jax.eval_shape(model.init, ...)` — leaves are
        `nn.LogicallyPartitioned` boxes of arrays or ShapeDtypeStructs; plain
        (unboxed) leaves with a shape are replicated.
    Returns:
      A tree shaped like the *unboxed* variables, one `NamedSharding` a leaf.
    """
    logical = nn.get_partition_spec(variables)
    is_spec = lambda x: isinstance(x, PartitionSpec)
    mesh_specs = jax.tree.leaves(nn.logical_to_mesh(logical, self.rules), is_leaf=is_spec)
    flat_logical = jax.tree.leaves(logical, is_leaf=is_spec)
    flat_shapes, treedef = jax.tree_util.tree_flatten_with_path(_unbox(variables))
    if not len(flat_logical) == len(mesh_specs) == len(flat_shapes):
      raise ValueError("variables hold leaves without a shape; expected arrays or "
                       "ShapeDtypeStructs (boxed or not)")
    fitted = [NamedSharding(self.mesh, _fit_spec(spec, x.shape, self.mesh, names,
                                                 param_key(path)))
              for names, spec, (path, x) in zip(flat_logical, mesh_specs, flat_shapes)]
    return jax.tree_util.tree_unflatten(treedef, fitted)

  def init(self, init_fn: Callable[..., Any], *args) -> tuple[Any, Any]:
    """Initialises variables directly in their sharded layout.

    The shapes come from `jax.eval_shape(init_fn, *args)`, so no full copy of
    the parameters ever exists on one device.

    Args:
      init_fn: e.g. `lambda rng: model.init(rng, enc_tokens, dec_tokens)`.
      *args: passed to `init_fn` (rng keys, example inputs).
    Returns:
      (variables, shardings): the unboxed variables placed on the mesh, and
      the matching tree of `NamedSharding`.
    """
    shardings = self.param_shardings(jax.eval_shape(init_fn, *args))
    platform = self.mesh.devices.flat[0].platform
    variables = jax.jit(lambda *a: _unbox(init_fn(*a)), out_shardings=shardings,
                        compiler_options=initializer_compiler_options(platform))(*args)
    return variables, shardings

  def state_shardings(self, abstract_state: Any, params: Mapping[str, Any]) -> Any:
    """Shardings of a train state from the shardings of its parameters.

    A leaf stored under a parameter's key with the parameter's shape (the
    parameter itself, Adam's mu and nu, ...) takes the parameter's sharding;
    every other leaf (step counts, rng, Adafactor's factored moments) is
    replicated.

    Args:
      abstract_state: a pytree of arrays or ShapeDtypeStructs (e.g. from
        `jax.eval_shape`), whose parameter-like leaves sit under dict keys
        that are flat parameter paths ('encoder/layers_0/.../kernel').
      params: {flat path: array or ShapeDtypeStruct with `.sharding`}.
    """
    def leaf(path, x):
      key = path[-1].key if path and isinstance(path[-1], jax.tree_util.DictKey) else None
      p = params.get(key) if isinstance(key, str) else None
      if p is not None and tuple(p.shape) == tuple(x.shape):
        return p.sharding
      return self.replicated()
    return jax.tree_util.tree_map_with_path(leaf, abstract_state)

  def place(self, tree: Any, shardings: Any) -> Any:
    """`jax.device_put(tree, shardings)`; leaves already so laid out are not copied."""
    return jax.device_put(tree, shardings)

  def shard_batch(self, batch: Mapping[str, np.ndarray],
                  every_process_has_all: bool = False) -> dict[str, jax.Array]:
    """Places a host batch on the mesh, each feature [batch, ...] split over 'data'.

    With several processes, `batch` is this process's part of the global batch:
    process p holds rows [p * local, (p + 1) * local), the rows its devices
    own along 'data' (read them with `process_shard_info`) — unless
    `every_process_has_all` (evaluation: every process builds the whole batch).
    """
    sharding = self.batch_sharding()
    data_dim = self.mesh.axis_names.index("data")
    # The rows of this process are split again over its own positions on 'data'.
    local_shards = len({index[data_dim] for index, device in np.ndenumerate(self.mesh.devices)
                        if device.process_index == jax.process_index()})
    out = {}
    for name, value in batch.items():
      value = np.asarray(value)
      if every_process_has_all:
        _check_feature(name, value, self.data_size)
        out[name] = jax.make_array_from_callback(value.shape, sharding, value.__getitem__)
      else:
        _check_feature(name, value, max(1, local_shards))
        out[name] = jax.make_array_from_process_local_data(sharding, value)
    return out

  def jit(self, fn: Callable, in_shardings: Any, out_shardings: Any,
          donate_argnums: tuple[int, ...] = ()) -> Any:
    """`jax.jit` with explicit input and output shardings (a `.lower()`-able object).

    Explicit out_shardings keep a state in the layout it came in, so the
    next call hits the compilation cache instead of recompiling.
    """
    return jax.jit(fn, in_shardings=in_shardings, out_shardings=out_shardings,
                   donate_argnums=donate_argnums)


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
