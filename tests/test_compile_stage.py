"""The `compile` stage: the tiny config compiled ahead of time for a v5e:2x2 TPU slice.

No TPU is needed: libtpu (jax[tpu], requirements-test.txt) compiles for an
abstract topology on this CPU host, and XLA's per-chip memory accounting is
read back from the executable. The scanned-layer FLOPs correction is checked
on the CPU backend against an unscanned compile.
"""

from __future__ import annotations

import json
import os

import types

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import pytest

from mhr_jax import errors, gin_cli
from mhr_jax.experiment import compile as compile_stage
from mhr_jax.experiment import pipeline, stages  # registers the gin configurables
from mhr_jax.experiment.model_setup import abstract_params
from mhr_jax.models import T5
from tests.utils import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH = [os.path.join(ROOT, "configs"), ROOT]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _compile_on_v5e_2x2(tmp_path, *bindings: str) -> None:
  """The embedded default (tiny T5, MHR over 24 synthetic tasks) set up for the compile
  stage on v5e:2x2; q/v adapters keep the TPU compile short (all_linear: 3x the time)."""
  pytest.importorskip("libtpu", reason="the compile stage needs libtpu (jax[tpu])")
  gin_cli.parse([os.path.join(ROOT, "configs", "default.gin")], [
      "run.stage = 'compile'", f"run.output_dir = '{tmp_path}'",
      "mhr_jax.MeshConfig.topology = 'v5e:2x2'", "mhr_jax.AdapterConfig.target_modules = 'qv'",
      "compile_steps.correct_flops = False", *bindings], SEARCH)


@pytest.mark.heavy
def test_tiny_compiles_for_v5e_2x2_split_over_model(tmp_path):
  _compile_on_v5e_2x2(tmp_path, "mhr_jax.MeshConfig.model = 2",
                      "mhr_jax.T5Config.scan_layers = True",
                      "compile_steps.steps = ['multitask_train']")
  report = pipeline.run()
  with open(tmp_path / "compile" / "compile_report.json") as f:
    assert json.load(f) == json.loads(json.dumps(report))
  assert "| multitask_train |" in (tmp_path / "compile" / "compile_report.md").read_text()
  assert report["topology"] == "v5e:2x2" and report["mesh"] == {"data": 2, "model": 2}
  step = report["steps"]["multitask_train"]
  assert step["fits"] and 0 < step["total_bytes"] < report["hbm_bytes_per_chip"]
  # The default rules split the attention/MLP kernels over model=2: each chip
  # holds exactly half of them, and they are most of the parameter bytes (a
  # stage that forgot the rules would split nothing).
  assert step["split_params_bytes_per_chip"] * 2 == step["split_params_bytes_total"]
  assert step["split_params_bytes_total"] > 0.5 * step["params_bytes_total"]
  assert step["params_bytes_per_chip"] < 0.75 * step["params_bytes_total"]
  # The new state comes back in the layout it went in: step 2 reuses step 1.
  assert step["resharded_outputs"] == 0, step["resharded_examples"]
  assert step["argument_bytes"] >= step["params_bytes_per_chip"]


def test_a_batch_that_does_not_split_over_the_mesh_is_one_line(tmp_path):
  # t0_3b.gin's adapt batch (8) on v5e-16 data-only was a jax IndivisibleError traceback.
  _compile_on_v5e_2x2(tmp_path, "mhr_jax.MeshConfig.data = 4", "mhr_jax.DataConfig.batch_size = 2",
                      "compile_steps.steps = ['adapt_train']")
  with pytest.raises(stages.StageError) as e:
    pipeline.run()
  message = errors.one_line(e.value)  # as run.py prints it (gin's call-site lines dropped)
  assert message.startswith("step adapt_train cannot be laid out on v5e:2x2 with mesh "
                            "{'data': 4, 'model': 1}: an input of shape (2, ")
  assert "has 2 rows for 4 shards; make that batch size a multiple of 4" in message
  assert "\n" not in message


def _forward_flops(config) -> tuple[float, types.SimpleNamespace]:
  """XLA's FLOPs for the tiny model's teacher-forced forward, and the step `_flops` lowers."""
  model = T5(config)
  params = nn.meta.unbox(abstract_params(model))
  tokens = jax.ShapeDtypeStruct((2, 6), jnp.int32), jax.ShapeDtypeStruct((2, 5), jnp.int32)
  fn = jax.jit(lambda p, e, d: model.apply({"params": p}, e, d).sum())
  step = types.SimpleNamespace(lower=lambda: fn.lower(params, *tokens))
  cost = step.lower().compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]), step


def test_scanned_flops_correction_matches_unscanned_compile():
  # XLA counts a scanned stack's body once; `_flops` adds the other layers
  # from one shallow unscanned compile. Against the full unscanned model: equal
  # up to the per-layer bookkeeping that a scan body and unrolled layers do
  # differently (1-2 % at this size); a layer too many or too few would be 25 %.
  config = tiny_config(num_layers=3, scan_layers=True)
  scanned, _ = _forward_flops(config)
  corrected = compile_stage._flops(lambda c: _forward_flops(c)[1], config, scanned)  # pylint: disable=protected-access
  unscanned, _ = _forward_flops(config.replace(scan_layers=False))
  assert scanned < 0.6 * unscanned  # the raw count really misses layers
  assert corrected == pytest.approx(unscanned, rel=0.03)


def test_scaling_grid_marks_what_the_arguments_alone_rule_out(tmp_path, capsys):
  """scripts/scaling_table.py: a cell not compiled reads "does not fit" only when the
  step's arguments exceed the chip's HBM, "cannot be laid out" for a layout error."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "scaling_table", os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts",
                                    "scaling_table.py"))
  table = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(table)
  gib = 1024 ** 3
  resident = {  # v5e: 16 GiB per chip; v4: 32
      "11b:v5e:2x2:4x1": {"multitask_train": {"state_and_batch_bytes_per_chip": 21 * gib},
                          "adapt_train": {"state_and_batch_bytes_per_chip": 15 * gib,
                                          "params_bytes_per_chip": 20 * gib}},
      "11b:v4:2x2x1:4x1": {"multitask_train": {"state_and_batch_bytes_per_chip": 21 * gib}},
      "3b:v5e:4x4:16x1": {"adapt_train": {"layout_error": "8 rows for 16 shards"}},
  }
  (tmp_path / "scaling.json").write_text("{}")
  (tmp_path / "resident.json").write_text(json.dumps(resident))
  table.cmd_table(str(tmp_path / "scaling.json"), str(tmp_path / "resident.json"))
  rows = {tuple(c.strip() for c in line.split("|")[1:4]): [c.strip() for c in line.split("|")[4:7]]
          for line in capsys.readouterr().out.splitlines() if line.startswith("| t0")}
  assert rows[("t0pp_11b", "v5e-4", "4 x 1")] == [
      "**does not fit**: arguments alone 21.00 GiB > 16 (not compiled)",
      "not compiled",  # 15 GiB of arguments: a compile would have to decide
      "**does not fit**: arguments alone 20.00 GiB > 16 (not compiled)"]  # its parameters
  assert rows[("t0pp_11b", "v4-8", "4 x 1")][0] == "not compiled"  # 21 of 32 GiB
  assert rows[("t0_3b", "v5e-16", "16 x 1")][1].startswith("**cannot be laid out**")
