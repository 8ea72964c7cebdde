"""Mesh, sharding rules and the 1-device == 8-device invariant.

XLA fixes the number of host (CPU) devices when jax starts, so the checks
that need 8 devices run this file as a script in a subprocess with
`--xla_force_host_platform_device_count=8`; the rest of the suite keeps its
default devices. `python tests/test_partitioning.py CHECK [ARGS]` runs one
check by hand.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mhr_jax import partitioning
from mhr_jax.models import T5
# The mesh tests' model and batch (shared with test_multiprocess.py).
from tests.utils import FAST_COMPILE_XLA_FLAGS
from tests.utils import loss_and_grad as _loss_fn
from tests.utils import mesh_adapter as _adapter
from tests.utils import mesh_batch as _batch
from tests.utils import mesh_config as _config

_REPO = pathlib.Path(__file__).resolve().parents[1]
_HAS_ADAPTERS = (importlib.util.find_spec("mhr_jax.adapters.config") is not None
                 and importlib.util.find_spec("mhr_jax.adapters.layers") is not None)


def _run_on_8_devices(check: str, *args: str, timeout: int = 300) -> None:
  """Runs `check(*args)` of this file in a fresh python with 8 CPU devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             XLA_FLAGS="--xla_force_host_platform_device_count=8 " + FAST_COMPILE_XLA_FLAGS,
             PYTHONPATH=os.pathsep.join([str(_REPO), os.environ.get("PYTHONPATH", "")]))
  proc = subprocess.run([sys.executable, __file__, check, *args], env=env, cwd=_REPO,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0 and "CHECK OK" in proc.stdout, (
      f"{check}{args} failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n"
      f"{proc.stderr[-6000:]}")


# --- Checks run in the 8-device subprocess. ----------------------------------

def check_equivalence(data: str, model_size: str, variant: str, adapter_kind: str,
                      compare_init: str = "no") -> None:
  """Loss and gradients on a (data, model) mesh equal the 1-device values.

  compare_init='yes' also checks that `Partitioner.init` draws the same values
  as an unsharded init (one more compile, so only one case pays for it).
  """
  assert jax.device_count() == 8, jax.devices()
  data, model_size = int(data), int(model_size)
  cfg = _config(variant)
  model = T5(cfg, adapter=_adapter(adapter_kind))
  host_batch = _batch(vocab=cfg.vocab_size)
  example = jnp.asarray(host_batch["encoder_input_tokens"][:1])
  init_fn = lambda rng: model.init(rng, example, example, task_ids=jnp.zeros((1,), jnp.int32))
  rng = jax.random.key(0)
  grad_fn = _loss_fn(model)

  partitioner = partitioning.Partitioner(partitioning.make_mesh(data=data, model=model_size))
  variables, shardings = partitioner.init(init_fn, rng)
  params, param_shardings = variables["params"], shardings["params"]
  for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(param_shardings)):
    assert x.sharding.is_equivalent_to(s, x.ndim), (x.sharding, s)
  unsharded = jax.device_get(params)
  if compare_init == "yes":  # the RNG is sharding-independent
    jax.tree.map(np.testing.assert_array_equal, unsharded,
                 jax.device_get(nn.unbox(jax.jit(init_fn)(rng))["params"]))

  # Move away from the init (LoRA B = 0 would zero the skills' gradients),
  # identically for both layouts.
  noise = np.random.default_rng(1)
  ref_params = jax.tree.map(
      lambda p: np.asarray(p) + 0.05 * noise.standard_normal(p.shape).astype(p.dtype),
      unsharded)
  params = jax.device_put(ref_params, param_shardings)

  # Reference: everything on one device.
  ref_loss, ref_grads = jax.jit(grad_fn)(ref_params, host_batch)

  batch = partitioner.shard_batch(host_batch)
  for name, x in batch.items():
    assert x.sharding.spec[0] == "data", (name, x.sharding)
    assert len(x.addressable_shards) == 8
    assert x.addressable_shards[0].data.shape[0] == x.shape[0] // data

  sharded_step = partitioner.jit(grad_fn,
                                 in_shardings=(param_shardings, partitioner.batch_sharding()),
                                 out_shardings=(partitioner.replicated(), param_shardings))
  loss, grads = sharded_step(params, batch)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
  flat_ref = jax.tree_util.tree_flatten_with_path(ref_grads)[0]
  flat = jax.tree.leaves(grads)
  assert len(flat) == len(flat_ref)
  for (path, g_ref), g in zip(flat_ref, flat):
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-5, atol=1e-5,
                               err_msg=jax.tree_util.keystr(path))
  for (path, g_ref) in flat_ref:  # the comparisons are not of zeros
    assert np.abs(np.asarray(g_ref)).sum() > 0, jax.tree_util.keystr(path)

  # The weights are really split over 'model' when the mesh has one.
  mlp = params["encoder"]["layers" if cfg.scan_layers else "layers_0"]["mlp"]
  wo = mlp["wo"]["kernel"]
  if model_size > 1:
    assert "model" in wo.sharding.spec, wo.sharding
    assert wo.addressable_shards[0].data.shape[-2] == cfg.d_ff // model_size
    assert "model" in params["token_embedder"]["embedding"].sharding.spec
  else:
    assert wo.sharding.is_fully_replicated
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    if "routing_logits" in name:
      assert x.sharding.is_fully_replicated, (name, x.sharding)
    if "query/adapter/skill_lora_b" in name and model_size > 1:
      assert x.sharding.spec[-1] == "model", (name, x.sharding)
  if adapter_kind != "none":
    assert any("skill_lora_b" in str(p) for p, _ in flat_ref), "no adapter parameters"
  print("CHECK OK")


def check_sparse_routing_steps(data: str, model_size: str) -> None:
  """Three row-sparse train steps on a mesh == on 1 device, compiled once per mesh."""
  assert jax.device_count() == 8
  from mhr_jax.adapters import methods  # pylint: disable=g-import-not-at-top
  from mhr_jax.experiment.model_setup import init_params, place_params  # pylint: disable=g-import-not-at-top
  from mhr_jax.training.optimizer import OptimizerConfig  # pylint: disable=g-import-not-at-top
  from mhr_jax.param_tree import flatten as flatten_params  # pylint: disable=g-import-not-at-top
  from mhr_jax.training.trainer import Trainer  # pylint: disable=g-import-not-at-top
  model = T5(_config("v1_1"), adapter=_adapter("poly"))
  opt = OptimizerConfig(learning_rate=1e-2, warmup_fraction=0.0, sparse_routing=True)
  trainable = methods.trainable_predicate("mhr", stage="multitask")
  host = init_params(model, jax.random.PRNGKey(0))
  batches = [dict(_batch(), task_ids=np.array(ids, np.int32))
             for ids in ([0, 1, 2, 0, 1, 2, 0, 1], [2, 2, 0, 0, 2, 2, 0, 0], [1] * 8)]
  out = []
  for mesh in (partitioning.make_mesh(data=1, model=1, devices=jax.devices()[:1]),
               partitioning.make_mesh(data=int(data), model=int(model_size))):
    partitioner = partitioning.Partitioner(mesh)
    trainer = Trainer(model, opt, len(batches), partitioner, single_task=False)
    params = place_params(model, host, partitioner)
    state, _ = trainer.run(params, trainable, iter(batches), seed=0, description="sparse",
                           show_progress=False)
    # The state came back in the layout it went in: steps 2 and 3 reused step 1's program.
    assert _compilations(trainer) == 1, _compilations(trainer)
    assert (jax.tree.map(lambda x: x.sharding, state)
            == trainer.state_shardings(params, trainable)), "state resharded by the step"
    out.append({k: np.asarray(v) for k, v in flatten_params(state.params).items()})
  one, many = out
  moved = [k for k in one if k.endswith("routing_logits")
           and not np.allclose(one[k], flatten_params(host)[k])]
  assert moved, "routing did not train"
  for k in one:
    np.testing.assert_allclose(many[k], one[k], rtol=1e-5, atol=1e-5, err_msg=k)
  print("CHECK OK")


def _compilations(trainer) -> int:
  """How many programs the trainer's jitted steps hold (1 per layout when nothing recompiled)."""
  return sum(step.jitted._cache_size() for _, step in trainer._cache.values())  # pylint: disable=protected-access


def _device0_bytes(tree) -> int:
  """Bytes of `tree` held by device 0 (the sum of its shards there)."""
  device = jax.devices()[0]
  return sum(shard.data.nbytes for x in jax.tree.leaves(tree)
             for shard in x.addressable_shards if shard.device == device)


def check_every_stage_shards_its_parameters(output_dir: str) -> None:
  """Each stage's parameters and train state, on a data 2 x model 4 mesh, are split over 'model'.

  Runs multitask, adapt, zero_shot and eval (tiny synthetic run) and records
  what every Trainer returns and every Evaluator receives. Equal losses could
  not tell a replicated layout from a sharded one; bytes on one device can.
  """
  import gin  # pylint: disable=g-import-not-at-top
  from mhr_jax import gin_cli  # pylint: disable=g-import-not-at-top
  from mhr_jax.evaluation.evaluator import Evaluator  # pylint: disable=g-import-not-at-top
  from mhr_jax.experiment import pipeline, stages  # pylint: disable=g-import-not-at-top
  from mhr_jax.param_tree import flatten as flatten_params  # pylint: disable=g-import-not-at-top
  from mhr_jax.training.trainer import Trainer  # pylint: disable=g-import-not-at-top
  assert jax.device_count() == 8
  seen = []  # (stage, what, tree)
  run, evaluate = Trainer.run, Evaluator.evaluate

  def recording_run(self, params, trainable_fn, batches, **kwargs):
    state, history = run(self, params, trainable_fn, batches, **kwargs)
    assert _compilations(self) == 1, (kwargs["description"], _compilations(self))
    seen.append((kwargs["description"].split("/")[0], "state", state))
    return state, history

  def recording_evaluate(self, params, examples, *args, **kwargs):
    seen.append((current[0], "params", params))
    return evaluate(self, params, examples, *args, **kwargs)

  Trainer.run, Evaluator.evaluate = recording_run, recording_evaluate
  # matplotlib is not under test here.
  stages.save_routing_picture = lambda probs, directory, *a, **k: {"png": directory, "csv": directory}
  configs = _REPO / "configs"
  tiny = ["mhr_jax.T5Config.d_model = 16", "mhr_jax.T5Config.d_kv = 4",
          "mhr_jax.T5Config.d_ff = 64", "mhr_jax.T5Config.num_heads = 4",
          "mhr_jax.T5Config.num_layers = 1", "mhr_jax.T5Config.num_decoder_layers = 1",
          "mhr_jax.AdapterConfig.n_skills = 2", "mhr_jax.AdapterConfig.rank = 2",
          "mhr_jax.DataConfig.batch_size = 4", "mhr_jax.DataConfig.eval_batch_size = 3",
          "mhr_jax.MeshConfig.data = 2", "mhr_jax.MeshConfig.model = 4",
          "train_multitask.mesh = @mhr_jax.MeshConfig()",
          "adapt_heldout.mesh = @mhr_jax.MeshConfig()", "mu_zero_shot.mesh = @mhr_jax.MeshConfig()",
          "evaluate_checkpoint.mesh = @mhr_jax.MeshConfig()",
          "train_multitask.steps = 2", "train_multitask.show_progress = False",
          # One training task for data (its family's table still gives 32 routing rows);
          # mu zero-shot trains on the checkpoint's mixture, that one task.
          "train_multitask.mixture = 'synthetic_up_def_then_up_mno_then_up_vwx'",
          "mu_zero_shot.mixture = None",
          "adapt_heldout.steps = 2", "adapt_heldout.seeds = (0,)",
          "adapt_heldout.show_progress = False", "mu_zero_shot.show_progress = False",
          "mu_zero_shot.steps = 1",
          "adapt_heldout.tasks = ['synthetic_up_def_then_up_mno_then_up_pqr']",
          "mu_zero_shot.tasks = ['synthetic_up_def_then_up_mno_then_up_pqr']",
          "evaluate_checkpoint.tasks = ['synthetic_up_def_then_up_mno_then_up_vwx']",
          "adapt_heldout.max_eval_examples = 3", "mu_zero_shot.max_eval_examples = 3",
          "evaluate_checkpoint.max_eval_examples = 3", f"run.output_dir = '{output_dir}'"]
  gin_cli.parse([str(configs / "experiments" / "synthetic.gin"), str(configs / "methods" / "mhr.gin")],
                tiny, [str(configs), str(_REPO)])
  for current in (["multitask"], ["adapt"], ["zero_shot"], ["eval"]):
    with gin.unlock_config():
      gin.bind_parameter("run.stage", current[0])
    pipeline.run()
  stages_seen = sorted({stage for stage, _, _ in seen})
  assert stages_seen == ["adapt", "eval", "multitask", "zero_shot"], stages_seen
  for stage, what, tree in seen:
    params = flatten_params(tree.params if what == "state" else tree)
    kernels = {k: v for k, v in params.items()
               if k.endswith("kernel") and ("/mlp/" in k or "/attention/" in k)}
    assert kernels, sorted(params)
    for k, v in kernels.items():  # every backbone kernel is split 4 ways over 'model'
      assert _device0_bytes(v) * 4 == v.nbytes, (stage, what, k, v.sharding)
    total = sum(v.nbytes for v in jax.tree.leaves(tree))
    print(f"BYTES {stage} {what}: device 0 holds {_device0_bytes(tree)} of {total}; "
          f"parameters {_device0_bytes(params)} of {sum(v.nbytes for v in params.values())}")
  print("CHECK OK")


def check_rules() -> None:
  """Rule table, divisibility fallback, unknown names, batch placement on 8 devices."""
  assert jax.device_count() == 8
  mesh = partitioning.make_mesh(data=-1, model=4)
  assert dict(mesh.shape) == {"data": 2, "model": 4}
  assert dict(partitioning.make_mesh().shape) == {"data": 8, "model": 1}

  box = lambda shape, names: nn.LogicallyPartitioned(jax.ShapeDtypeStruct(shape, jnp.float32),
                                                     names)
  variables = {
      "kernel": box((16, 32), ("embed", "mlp")),
      "lora_b": box((4, 32), ("lora_rank", "mlp")),
      "routing_logits": box((3, 2, 4), ("tasks", "routing_heads", "skills")),
      "new_axis": box((8, 12), ("some_future_axis", "joined_kv")),
      "odd_heads": box((2, 8), ("heads", "relpos_buckets")),  # 2 % 4 != 0
      "stacked": box((3, 16, 32), ("layers", "embed", "mlp")),
      "plain": jnp.ones((8, 8)),
  }
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logging.getLogger().addHandler(handler)
  logging.getLogger().setLevel(logging.INFO)
  partitioner = partitioning.Partitioner(mesh)
  shardings = partitioner.param_shardings(variables)
  shardings_again = partitioner.param_shardings(variables)
  specs = {k: tuple(s.spec) for k, s in shardings.items()}
  assert specs == {
      "kernel": (None, "model"),
      "lora_b": (None, "model"),
      "routing_logits": (),
      "new_axis": (None, "model"),
      "odd_heads": (),
      "stacked": (None, None, "model"),
      "plain": (),
  }, specs
  assert jax.tree.map(lambda s: s.spec, shardings_again) == jax.tree.map(lambda s: s.spec,
                                                                         shardings)
  fallbacks = [r for r in records if "not divisible" in r.getMessage()]
  assert len(fallbacks) == 1 and "odd_heads" in fallbacks[0].getMessage(), records

  # Batches: split over 'data' (2 rows per data shard here), checked for size.
  host = {"tokens": np.arange(12, dtype=np.int32).reshape(4, 3)}
  for every_process_has_all in (False, True):
    placed = partitioner.shard_batch(host, every_process_has_all)["tokens"]
    assert tuple(placed.sharding.spec) == ("data",)
    assert {s.data.shape for s in placed.addressable_shards} == {(2, 3)}
    np.testing.assert_array_equal(placed, host["tokens"])
  with pytest.raises(ValueError, match=r"'tokens' has 3 rows.*2 data shards"):
    partitioner.shard_batch({"tokens": np.zeros((3, 2), np.int32)})
  with pytest.raises(TypeError, match="'choices'"):
    partitioner.shard_batch({"choices": np.array([["a", "b"]] * 2)})

  # Rules set from gin replace the defaults, for every placement.
  import gin  # pylint: disable=g-import-not-at-top
  from mhr_jax.experiment.config import MeshConfig  # pylint: disable=g-import-not-at-top
  gin.parse_config(["mhr_jax.MeshConfig.model = 4",
                    "mhr_jax.MeshConfig.logical_axis_rules = [('mlp', None), ('embed', 'model')]"])
  from_gin = MeshConfig().build()
  gin.clear_config()
  assert tuple(from_gin.param_shardings(variables)["kernel"].spec) == ("model",)
  assert partitioning.process_shard_info() == (0, 1)
  print("CHECK OK")


# --- Tests. -----------------------------------------------------------------

@pytest.mark.parametrize("data,model_size,variant", [
    (8, 1, "v1_0"),  # data parallel
    (2, 4, "v1_1"),  # data x model parallel, untied vocab head
])
def test_sharded_loss_and_grads_match_one_device(data, model_size, variant):
  _run_on_8_devices("check_equivalence", str(data), str(model_size), variant, "none",
                    "yes" if model_size > 1 else "no")


@pytest.mark.skipif(not _HAS_ADAPTERS, reason="mhr_jax.adapters.{config,layers} not there yet")
def test_sharded_routed_adapter_matches_one_device():
  _run_on_8_devices("check_equivalence", "2", "4", "v1_1", "poly")


@pytest.mark.skipif(not _HAS_ADAPTERS, reason="mhr_jax.adapters.{config,layers} not there yet")
@pytest.mark.heavy
def test_sparse_routing_steps_match_one_device():
  _run_on_8_devices("check_sparse_routing_steps", "2", "4")


def test_rules_fallbacks_and_batch_placement_on_8_devices():
  _run_on_8_devices("check_rules")


@pytest.mark.heavy
def test_every_stage_splits_its_parameters_over_model(tmp_path):
  _run_on_8_devices("check_every_stage_shards_its_parameters", str(tmp_path / "run"),
                    timeout=900)  # four stages with seqio data: the slowest check here


def test_make_mesh_errors_name_sizes_and_device_count():
  devices = jax.devices()[:1]
  with pytest.raises(ValueError, match=r"data=2 x model=1 = 2 devices, but 1 devices"):
    partitioning.make_mesh(data=2, model=1, devices=devices)
  with pytest.raises(ValueError, match=r"model=3 does not divide the 1 available"):
    partitioning.make_mesh(data=-1, model=3, devices=devices)
  with pytest.raises(ValueError, match=r"data=0, model=1"):
    partitioning.make_mesh(data=0, model=1, devices=devices)
  mesh = partitioning.make_mesh(devices=devices)
  assert mesh.axis_names == ("data", "model") and mesh.devices.size == 1


def test_every_adapter_axis_has_a_replicating_rule():
  routing = pytest.importorskip("mhr_jax.adapters.routing")
  rules = dict(partitioning.DEFAULT_RULES)
  for name in routing.ADAPTER_AXES:
    assert name in rules and rules[name] is None, name


def test_rule_tables_are_checked_once_when_the_partitioner_is_built():
  mesh = partitioning.make_mesh(devices=jax.devices()[:1])
  with pytest.raises(ValueError, match=r"rules are None.*DEFAULT_RULES"):
    partitioning.Partitioner(mesh, None)
  with pytest.raises(ValueError, match=r"mesh axis 'tensor'; valid mesh axes: \['data', 'model'\]"):
    partitioning.Partitioner(mesh, [("mlp", "tensor")])
  assert partitioning.Partitioner(mesh, [["mlp", "model"]]).rules == (("mlp", "model"),)


def test_unboxed_arrays_are_replicated():
  partitioner = partitioning.Partitioner(partitioning.make_mesh(devices=jax.devices()[:1]))
  shardings = partitioner.param_shardings({"w": jnp.ones((4, 2)), "s": jnp.zeros(())})
  assert shardings["w"].spec == jax.sharding.PartitionSpec()
  assert shardings["s"].is_fully_replicated


def test_single_process_distributed_setup_is_a_no_op():
  assert partitioning.maybe_initialize_distributed() is False
  index, count = partitioning.process_shard_info()
  assert 0 <= index < count


if __name__ == "__main__":
  globals()[sys.argv[1]](*sys.argv[2:])
