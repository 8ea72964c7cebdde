"""The `compile` stage: every jitted step of the stages, compiled ahead of time for a TPU slice.

No weights, no data, no accelerator: the architecture comes from a size
preset or a `config.json`, the shapes from `jax.eval_shape`, the devices from
`jax.experimental.topologies` (libtpu compiles for e.g. 'v5e:2x4' on a CPU
host). Each step is lowered with explicit input and output shardings and
compiled; XLA's own per-chip accounting then says whether it fits
(the habit of MaxText's `train_compile.py`).

Steps (what `run.stage=multitask` / `adapt` would jit):
  multitask_train  the multi-task train step (`train_multitask`'s method, batch)
  adapt_train      the few-shot train step (`adapt_heldout`'s method, one task)
  score            rank classification of an eval batch of choices (adapted model)
  decode           decoding of an eval batch (greedy, or `Evaluator.num_beams` beams)

Per step the report gives the per-chip argument / output / alias / temp /
code bytes (XLA's `memory_analysis`), their total against the chip's HBM,
FLOPs per chip, a step time at the chip's peak bf16 rate, the compile time,
the per-chip and total parameter bytes, and the state leaves whose output
layout differs from their input layout (0 expected: a resharded output makes
the next step recompile).

FLOPs: XLA's `cost_analysis` counts a loop body once, so a scanned layer
stack counts as one layer. When `scan_layers` is on, the same step is also
compiled unscanned with 2 encoder and 2 decoder layers; the difference is
one layer of each, extrapolated linearly to the real depth. The decode
step's token loop is counted once (one token).

Settings come from the gin bindings of the stages themselves
(`train_multitask.*`, `adapt_heldout.*`, `MeshConfig.*`), so compiling
`configs/experiments/t0_3b.gin` checks exactly the steps that file would run:

  python run.py --gin_file=configs/experiments/t0_3b.gin --gin.run.stage=compile \\
      --gin.MeshConfig.topology="'v5e:2x4'" --gin.MeshConfig.model=4 \\
      --gin.compile_steps.model_size="'t0_3b'"
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import math
import os
import re
import time
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import gin
import jax
import numpy as np
from jax.experimental import topologies

from mhr_jax import partitioning
from mhr_jax.adapters import methods
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.evaluation.batching import make_choice_batch
from mhr_jax.evaluation.results import write_atomic
from mhr_jax.experiment import chips, stages
from mhr_jax.experiment import data as stage_data
from mhr_jax.experiment.config import DataConfig, MeshConfig
from mhr_jax.experiment.model_setup import abstract_params, example_batch, param_shardings
from mhr_jax.models import T5, T5Config
from mhr_jax.models.presets import preset_config
from mhr_jax.partitioning import Partitioner
from mhr_jax.training.optimizer import OptimizerConfig
from mhr_jax.training.state import TrainState
from mhr_jax.training.trainer import Trainer

log = logging.getLogger(__name__)

STEPS = ("multitask_train", "adapt_train", "score", "decode")
GiB = chips.GiB
FIBER_STACK_FLAG = "--fibers_default_thread_stack_size=33554432"  # 32 MiB


class DoesNotFit(stages.StageError):
  """A compiled step needs more memory per chip than the chip has."""


# --- Topology and mesh -----------------------------------------------------------


def abstract_devices(topology: str) -> list:
  """The devices of a TPU slice ('v5e:2x4', 'v4:2x2x1'), usable without the hardware.

  v4 and v5p chips are one device each (megacore), as on a real slice.
  """
  try:
    chips.chip_of_topology(topology)  # a clear error for an unknown chip
  except ValueError as e:
    raise stages.StageError(str(e)) from None
  # libtpu takes a machine-wide lock (/tmp/libtpu_lockfile) meant for real
  # chips; compiling for abstract devices is safe in several processes at once.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  # libtpu's compiler runs its work on fiber threads with small stacks; the
  # T0-3B train steps overflowed them (SIGSEGV, "STACK OVERFLOW" in
  # FusedSpatialMajorConvolution::MakeConvWindows). libtpu reads its flags
  # when it loads, here (jax's CPU backend and TensorFlow do not load it).
  flags = os.environ.get("LIBTPU_INIT_ARGS", "")
  if "fibers_default_thread_stack_size" not in flags:
    os.environ["LIBTPU_INIT_ARGS"] = f"{flags} {FIBER_STACK_FLAG}".strip()
  kwargs = {}
  if topology.split(":")[0] in ("v4", "v5p"):
    kwargs = dict(chip_config_name="megacore", chips_per_host_bounds=(2, 2, 1), num_slices=1)
  try:
    return list(topologies.get_topology_desc(platform="tpu", topology_name=topology,
                                             **kwargs).devices)
  except Exception as e:  # libtpu's messages are long; keep the first line
    raise stages.StageError(f"cannot build TPU topology {topology!r}: "
                            f"{str(e).strip().splitlines()[0]}") from None


# --- Building the steps (with the stages' own Trainer and Evaluator) -------------------


def _abstract(tree: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs carrying their shardings, for `jit(...).lower`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      tree, shardings)


def _batch_abstract(host: dict, partitioner: Partitioner) -> dict:
  """A host batch's shapes, each feature [batch, ...] split over 'data' (`shard_batch`)."""
  sharding = partitioner.batch_sharding()
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in host.items()}


def _choice_batch(batch_size: int, num_choices: int, input_length: int,
                  target_length: int) -> dict:
  """A zero multiple-choice batch with the shapes of `batching.make_choice_batch`."""
  return make_choice_batch(None, [], [], [], [], input_length, target_length,
                           pad_to=batch_size, num_choices=num_choices)


@dataclasses.dataclass
class BuiltStep:
  """A step as the stages jit it, and how to lower it from abstract arguments."""
  lower: Callable[[], jax.stages.Lowered]
  args: tuple               # the abstract arguments of the jitted function (with shardings)
  params_abstract: Any      # unboxed abstract parameters (for the byte counts)
  params_shardings: Any
  state_args: Any = None    # (train steps) the abstract (step, trainable, opt_state, rng)


def _abstract_params(model: T5, partitioner: Partitioner) -> tuple[Any, Any]:
  """(unboxed ShapeDtypeStructs with shardings, shardings) of `model`'s parameters."""
  shardings = param_shardings(model, partitioner)
  abstract = partitioning._unbox(abstract_params(model))  # pylint: disable=protected-access
  return _abstract(abstract, shardings), shardings


def build_train_step(model: T5, method: str, stage: str, optimizer_config: OptimizerConfig,
                     steps: int, train_backbone: bool, host_batch: dict,
                     partitioner: Partitioner, single_task: bool,
                     batch_loss: Optional[Callable] = None) -> BuiltStep:
  """The train step of `stage` ('multitask' | 'adapt') as its Trainer jits it, from shapes only."""
  trainer = Trainer(model, optimizer_config, steps, partitioner, single_task=single_task,
                    batch_loss=batch_loss)
  params, params_sh = _abstract_params(model, partitioner)
  trainable = methods.trainable_predicate(method, stage=stage, train_backbone=train_backbone)
  state_sh = trainer.state_shardings(params, trainable)
  state = _abstract(jax.eval_shape(
      lambda p, key: TrainState.create(p, trainable, trainer.optimizer.tx, key), params,
      jax.random.PRNGKey(0)), state_sh)
  step = trainer.jit_step(state_sh)
  batch = _batch_abstract(host_batch, partitioner)
  mutable = (state.step, state.trainable, state.opt_state, state.rng)
  return BuiltStep(lambda: step.lower(state, batch), (mutable, state.frozen, batch), params,
                   params_sh, state_args=mutable)


def build_eval_step(model: T5, kind: str, data: DataConfig, partitioner: Partitioner,
                    num_choices: int, length_normalize: bool) -> BuiltStep:
  """'score' (rank classification) or 'decode' as the adapt stage's Evaluator jits them.

  Batch sizes as the Evaluator forms them: decode takes `eval_batch_size`
  rounded up to the 'data' axis; score takes that many (example, choice)
  pairs, i.e. eval_batch_size // num_choices examples (rounded up likewise).
  """
  # The adapt stage's own Evaluator (no vocabulary: nothing is tokenised here).
  evaluator = stages._evaluator(model, None, data, partitioner, single_task=True,  # pylint: disable=protected-access
                                length_normalize=length_normalize)
  params, params_sh = _abstract_params(model, partitioner)
  rows = partitioner.data_size
  # pylint: disable=protected-access
  if kind == "score":
    per_batch = -(-max(1, evaluator.batch_size // num_choices) // rows) * rows
    batch = _batch_abstract(_choice_batch(per_batch, num_choices, data.input_length,
                                          data.target_length), partitioner)
    return BuiltStep(lambda: evaluator._score.lower(params, batch), (params, batch), params,
                     params_sh)
  batch = _batch_abstract({k: v for k, v in example_batch(
      evaluator.batch_size, data.input_length, data.target_length).items()
                           if k in ("encoder_input_tokens", "task_ids")}, partitioner)
  args = (params, batch["encoder_input_tokens"], batch["task_ids"])
  return BuiltStep(lambda: evaluator._decode.lower(*args), args, params, params_sh)


# --- Compiling and measuring ----------------------------------------------------------

# XLA's two out-of-memory messages: "Used 17.1G of 15.75G hbm" and "the total
# memory required for HLO temporaries (21.05G) exceeds available HBM (15.75G)".
_OOM = re.compile(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm"
                  r"|memory required for [\w ]+\(([\d.]+)([KMGT]?)\) exceeds")
_UNITS = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def _param_bytes(abstract: Any, shardings: Any) -> dict:
  """Bytes of the parameters, whole and per chip; also of those split over some mesh axis."""
  out = dict.fromkeys(("params_bytes_total", "params_bytes_per_chip",
                       "split_params_bytes_total", "split_params_bytes_per_chip"), 0)
  for x, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    item = np.dtype(x.dtype).itemsize
    whole, mine = math.prod(x.shape) * item, math.prod(s.shard_shape(x.shape)) * item
    out["params_bytes_total"] += whole
    out["params_bytes_per_chip"] += mine
    if mine < whole:
      out["split_params_bytes_total"] += whole
      out["split_params_bytes_per_chip"] += mine
  return out


def _resharded(compiled, built: BuiltStep) -> list[str]:
  """Paths of state leaves whose output sharding differs from their input sharding."""
  if built.state_args is None:
    return []
  outs = compiled.output_shardings[0]
  ins = compiled.input_shardings[0][0]
  flat_in = jax.tree_util.tree_flatten_with_path(ins)[0]
  flat_out = jax.tree.leaves(outs)
  flat_args = jax.tree.leaves(built.state_args)
  bad = []
  for (path, s_in), s_out, arg in zip(flat_in, flat_out, flat_args):
    if not s_in.is_equivalent_to(s_out, len(arg.shape)):
      bad.append(jax.tree_util.keystr(path))
  return bad


def _indivisible(message: str) -> str:
  """jax's IndivisibleError as one line: which shape, how many shards, what to change."""
  shape = re.search(r"full shape: (\([^)]*\))", message)
  parts = re.search(r"partitioned (\d+) times, but the dimension size is (\d+)", message)
  if not (shape and parts):
    return message.strip().splitlines()[0]
  return (f"an input of shape {shape.group(1)} has {parts.group(2)} rows for {parts.group(1)} "
          f"shards; make that batch size a multiple of {parts.group(1)} (DataConfig), or "
          "use fewer data shards (MeshConfig.data / model)")


def compile_one(built: BuiltStep) -> dict:
  """Lowers and compiles one step; returns its per-chip memory, FLOPs and timings."""
  t0 = time.time()
  lowered = built.lower()  # trace + lower to StableHLO: seconds; the rest is XLA:TPU
  lower_seconds = round(time.time() - t0, 1)
  try:
    compiled = lowered.compile()
  except Exception as e:  # XLA refuses a program that does not fit the chip
    text = str(e)
    m = _OOM.search(text)
    if "RESOURCE_EXHAUSTED" not in text and m is None:
      raise
    out = {"compile_seconds": round(time.time() - t0, 1), "lower_seconds": lower_seconds,
           "fits": False, "error": text.strip().splitlines()[0][:300]}
    if m:
      amount, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(5), m.group(6))
      out["total_bytes"] = int(float(amount) * _UNITS[unit])
    return out
  seconds = time.time() - t0
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  resharded = _resharded(compiled, built)
  return {
      "argument_bytes": int(mem.argument_size_in_bytes),
      "output_bytes": int(mem.output_size_in_bytes),
      "alias_bytes": int(mem.alias_size_in_bytes),
      "temp_bytes": int(mem.temp_size_in_bytes),
      "code_bytes": int(mem.generated_code_size_in_bytes),
      "total_bytes": int(total),
      "flops_per_chip_raw": float(cost.get("flops", 0.0)) if cost else 0.0,
      **_param_bytes(built.params_abstract, built.params_shardings),
      "resharded_outputs": len(resharded),
      "resharded_examples": resharded[:5],
      "compile_seconds": round(seconds, 1),
      "lower_seconds": lower_seconds,
  }


def _flops(built_fn: Callable[[T5Config], BuiltStep], config: T5Config,
           scanned_flops: float) -> float:
  """FLOPs per chip with every scanned layer counted, from one extra unscanned compile.

  The scanned step counts `rest + enc_layer + dec_layer` (each loop body
  once); the same step unscanned with 2 encoder and 2 decoder layers counts
  `rest + 2 enc_layer + 2 dec_layer`. Their difference is one layer of each,
  extrapolated to the real depths (3 compiles in all when the depths differ).
  """

  def unscanned(enc: int, dec: int) -> float:
    shallow = config.replace(scan_layers=False, num_layers=enc, num_decoder_layers=dec)
    compiled = built_fn(shallow).lower().compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])

  n_enc, n_dec = config.num_layers, config.num_decoder_layers
  if n_enc == n_dec:
    return scanned_flops + (n_enc - 1) * (unscanned(2, 2) - scanned_flops)
  enc_layer = unscanned(2, 1) - scanned_flops
  dec_layer = unscanned(1, 2) - scanned_flops
  return scanned_flops + (n_enc - 1) * enc_layer + (n_dec - 1) * dec_layer


# --- Settings from the stages' gin bindings -------------------------------------------


def stage_settings(fn: Callable) -> dict:
  """A stage function's keyword arguments as gin would call it (defaults + bindings)."""
  defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()
              if p.default is not inspect.Parameter.empty}
  # Unbound config objects: built now, so `MeshConfig.x = ...` bindings apply
  # (a signature default was built at import, before any gin file was read).
  defaults.update(mesh=MeshConfig(), data=DataConfig())
  return {**defaults, **gin.get_bindings(fn)}


def resolve_model_config(model_size: Optional[str], multitask: dict) -> T5Config:
  """The architecture: `model_size` (preset or config.json), else the stage's own source.

  Numerics (dtype, param_dtype, scan_layers, remat, dropout) always come from
  `train_multitask.model_config` when it is set, as in the real stage.
  """
  config = multitask.get("model_config")
  numerics = {f: getattr(config, f) for f in stages._NUMERICS} if config else {}  # pylint: disable=protected-access
  if model_size:
    return preset_config(model_size, **numerics)
  hf = multitask.get("hf_checkpoint")
  if hf:
    return preset_config(hf, **numerics)  # only its config.json is read
  if config is None:
    raise stages.StageError("compile needs an architecture: set compile_steps.model_size to "
                            "a preset or a config.json, or train_multitask.model_config")
  return config


def _n_tasks(n_tasks: Optional[int], mixture: str) -> int:
  if n_tasks is not None:
    return int(n_tasks)
  try:
    return len(stage_data.task_id_table(mixture))
  except Exception as e:  # pylint: disable=broad-except
    raise stages.StageError(f"cannot count the tasks of mixture {mixture!r} without its data "
                            f"({type(e).__name__}); set compile_steps.n_tasks") from None


def _partitioner_for(stage: dict, topology: Optional[str]) -> tuple[str, Partitioner]:
  """The stage's Partitioner (its MeshConfig's sizes and rules) over `topology`'s devices."""
  mesh_config = stage.get("mesh") or MeshConfig()
  topology = topology or mesh_config.topology
  if not topology:
    raise stages.StageError("compile needs a TPU topology: set MeshConfig.topology (or "
                            f"compile_steps.topology), e.g. 'v5e:2x4'; valid chips: "
                            f"{sorted(chips.CHIPS)}")
  # 'local': this host's own devices (e.g. GPUs), compiled for as they are.
  devices = jax.devices() if topology == "local" else abstract_devices(topology)
  try:
    mesh = partitioning.make_mesh(mesh_config.data, mesh_config.model, devices=devices)
    return topology, Partitioner(mesh, mesh_config.logical_axis_rules)
  except ValueError as e:
    raise stages.StageError(f"topology {topology!r}: {e}") from None


# --- The stage ------------------------------------------------------------------------


@gin.configurable(denylist=["output_dir"])
def compile_steps(output_dir: str, *, topology: Optional[str] = None,
                  model_size: Optional[str] = None, n_tasks: Optional[int] = None,
                  steps: Sequence[str] = STEPS, num_choices: int = 4,
                  correct_flops: bool = True, fail_if_too_big: bool = True) -> dict:
  """Compiles every step of the stages for `topology`; writes compile_report.{json,md}.

  Args:
    output_dir: the report goes to `output_dir/compile/`.
    topology: a TPU slice ('v5e:2x4'), or 'local' for this host's own devices
      (a GPU host); default `MeshConfig.topology`.
    model_size: a `presets.SIZE_PRESETS` name or a config.json path; default:
      `train_multitask.hf_checkpoint`'s config.json, else `train_multitask.model_config`.
    n_tasks: routing rows of the multi-task stage; default: counted from the
      mixture (needs its data).
    steps: a subset of `STEPS`.
    num_choices: answer choices per example in the `score` step's batch (and in
      the adapt step's batch when `adapt_heldout.loss` is active).
    correct_flops: count every scanned layer's FLOPs (one extra, shallow compile a step).
    fail_if_too_big: raise (one line) when a step does not fit the chip.
  Returns:
    The report: {'topology', 'mesh', 'chip', 'steps': {name: {...}}}.
  """
  unknown = sorted(set(steps) - set(STEPS))
  if unknown:
    raise stages.StageError(f"unknown compile step(s) {unknown}; valid choices: {list(STEPS)}")
  mt = stage_settings(stages.train_multitask)
  ad = stage_settings(stages.adapt_heldout)
  topology, partitioner = _partitioner_for(mt, topology)
  mesh = partitioner.mesh
  try:
    chip = (chips.chip_of_device(mesh.devices.flat[0]) if topology == "local"
            else chips.chip_of_topology(topology))
  except ValueError as e:
    raise stages.StageError(str(e)) from None
  config = resolve_model_config(model_size, mt)
  tasks = _n_tasks(n_tasks, mt["mixture"])
  if num_choices < 1:
    raise stages.StageError(f"compile_steps.num_choices={num_choices!r} must be >= 1")
  mt_adapter = methods.multitask_adapter_config(mt["method"], mt.get("adapter_config")
                                                or AdapterConfig(), n_tasks=tasks)
  ad_adapter = _adapt_adapter(ad["method"], mt_adapter, config, ad.get("adapter_config"))
  mt_data, ad_data = mt["data"], ad["data"]

  # The adapt stage trains on choice batches when its multiple-choice loss is on.
  ad_loss = ad["loss"]
  ad_batch = (_choice_batch(ad_data.batch_size, num_choices, ad_data.input_length,
                            ad_data.target_length) if ad_loss.active
              else example_batch(ad_data.batch_size, ad_data.input_length,
                                 ad_data.target_length))
  builders = {
      "multitask_train": lambda c: build_train_step(
          T5(c, adapter=mt_adapter), mt["method"], "multitask", mt["optimizer"], mt["steps"],
          mt["train_backbone"], example_batch(mt_data.batch_size, mt_data.input_length,
                                              mt_data.target_length),
          partitioner, single_task=False),
      "adapt_train": lambda c: build_train_step(
          T5(c, adapter=ad_adapter), ad["method"], "adapt", ad["optimizer"], ad["steps"],
          False, ad_batch, partitioner, single_task=True,
          batch_loss=ad_loss if ad_loss.active else None),
      "score": lambda c: build_eval_step(T5(c, adapter=ad_adapter), "score", ad_data,
                                         partitioner, num_choices, ad["length_normalize"]),
      "decode": lambda c: build_eval_step(T5(c, adapter=ad_adapter), "decode", ad_data,
                                          partitioner, num_choices, ad["length_normalize"]),
  }
  mesh_shape = dict(mesh.shape)
  report = {"topology": topology, "mesh": mesh_shape, "chip": chip.name,
            "hbm_bytes_per_chip": chip.hbm_bytes, "peak_bf16_flops_per_chip": chip.peak_bf16_flops,
            "model": {k: getattr(config, k) for k in ("vocab_size", "d_model", "num_heads", "d_kv",
                                                      "d_ff", "num_layers", "num_decoder_layers",
                                                      "dtype", "param_dtype", "scan_layers",
                                                      "remat")},
            "multitask_method": mt["method"], "adapt_method": ad["method"], "n_tasks": tasks,
            "adapter_param_dtype": mt_adapter.param_dtype if mt_adapter else None,
            "steps": {}}
  stage_dir = os.path.join(output_dir, "compile")
  os.makedirs(stage_dir, exist_ok=True)

  def write() -> str:  # after every compile: a long run keeps what it measured
    write_atomic(os.path.join(stage_dir, "compile_report.json"), json.dumps(report, indent=1))
    table = markdown_report(report)
    write_atomic(os.path.join(stage_dir, "compile_report.md"), table)
    return table

  for name in steps:
    log.info("compile: %s for %s mesh %s", name, topology, mesh_shape)
    try:
      result = compile_one(builders[name](config))
    except ValueError as e:
      if type(e).__name__ != "IndivisibleError":  # jax's: an array does not split over the mesh
        raise
      raise stages.StageError(f"step {name} cannot be laid out on {topology} with mesh "
                              f"{mesh_shape}: {_indivisible(str(e))}") from None
    if result.get("fits", True):
      result["fits"] = result["total_bytes"] <= chip.hbm_bytes
      result["flops_per_chip"] = result["flops_per_chip_raw"]
      result["flops_counted"] = "all layers" if not config.scan_layers else "one layer per stack"
    report["steps"][name] = result
    log.info("compile: %s %s", name, _short(result))
    write()
  too_big = [(n, r) for n, r in report["steps"].items() if not r["fits"]]
  if too_big and fail_if_too_big:
    name, r = too_big[0]
    need = f"{r['total_bytes'] / GiB:.2f} GiB" if "total_bytes" in r else "more"
    raise DoesNotFit(f"step {name} does not fit {topology} with mesh {mesh_shape}: needs {need} "
                     f"per chip, {chip.name} has {chip.hbm_bytes / GiB:.0f} GiB "
                     f"(report: {stage_dir}/compile_report.md)")
  # FLOPs of scanned layers: a second pass, so the memory numbers come first.
  for name, result in report["steps"].items():
    if correct_flops and config.scan_layers and result["fits"]:
      result["flops_per_chip"] = _flops(builders[name], config, result["flops_per_chip_raw"])
      result["flops_counted"] = "all layers"
      write()
  for result in report["steps"].values():
    if "flops_per_chip" in result:
      result["step_seconds_at_peak"] = result["flops_per_chip"] / chip.peak_bf16_flops
  print("\n" + write())
  return report


def _adapt_adapter(method: str, mt_adapter, config: T5Config, base) -> Optional[AdapterConfig]:
  """The adapter the adapt stage builds from the multi-task one (shapes only)."""
  captured = {}

  def build(params):
    captured["adapter"], out = methods.init_adaptation_params(method, params, mt_adapter,
                                                              base_config=base)
    return out

  mt_params = nn.meta.unbox(abstract_params(T5(config, adapter=mt_adapter)))
  jax.eval_shape(build, mt_params)
  return captured["adapter"]


def _short(r: dict) -> str:
  if "argument_bytes" not in r:
    return f"does not fit: {r.get('error', '')}"
  return (f"total {r['total_bytes'] / GiB:.2f} GiB/chip (args {r['argument_bytes'] / GiB:.2f}, "
          f"temp {r['temp_bytes'] / GiB:.2f}), {r.get('flops_per_chip', 0):.3g} FLOPs/chip, "
          f"compiled in {r['compile_seconds']} s")


def markdown_report(report: dict) -> str:
  """One row per step: per-chip bytes (GiB), fit, FLOPs, step time at peak, compile time."""
  mesh = " x ".join(f"{k} {v}" for k, v in report["mesh"].items())
  hbm = report["hbm_bytes_per_chip"] / GiB
  lines = [f"### {report['topology']} ({report['chip']}), mesh {mesh}",
           "",
           f"Model d_model {report['model']['d_model']}, {report['model']['num_layers']}+"
           f"{report['model']['num_decoder_layers']} layers, params {report['model']['param_dtype']}"
           f" (adapters {report['adapter_param_dtype']}), activations {report['model']['dtype']};"
           f" {report['multitask_method']} over {report['n_tasks']} tasks, adapt "
           f"{report['adapt_method']}. GiB per chip; HBM {hbm:.0f} GiB; step time at the peak "
           f"{report['peak_bf16_flops_per_chip'] / 1e12:.0f} TFLOP/s bf16 per chip.",
           "",
           "| step | params | args | output | alias | temp | total | fits | TFLOPs/chip | "
           "s at peak | resharded | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  g = lambda b: f"{b / GiB:.2f}"
  for name, r in report["steps"].items():
    if "argument_bytes" not in r:
      total = g(r["total_bytes"]) if "total_bytes" in r else "?"
      lines.append(f"| {name} | | | | | | {total} | **no** (compiler: out of memory) | | | | "
                   f"{r['compile_seconds']} |")
      continue
    lines.append(
        f"| {name} | {g(r['params_bytes_per_chip'])} of {g(r['params_bytes_total'])} | "
        f"{g(r['argument_bytes'])} | {g(r['output_bytes'])} | {g(r['alias_bytes'])} | "
        f"{g(r['temp_bytes'])} | {g(r['total_bytes'])} | {'yes' if r['fits'] else '**no**'} | "
        f"{r['flops_per_chip'] / 1e12:.3g}{'' if r['flops_counted'] == 'all layers' else '*'} | "
        f"{r.get('step_seconds_at_peak', float('nan')):.3g} | "
        f"{r['resharded_outputs']} | {r['compile_seconds']} |")
  if any(r.get("flops_counted", "all layers") != "all layers" for r in report["steps"].values()):
    lines += ["", "\\* scanned layers counted once (FLOPs correction off)."]
  if "decode" in report["steps"]:
    lines += ["", "decode: the token loop's body is counted once (one generated token)."]
  return "\n".join(lines) + "\n"
