"""The `compile` stage: the tiny config compiled ahead of time for a v5e:2x2 TPU slice.

No TPU is needed: libtpu (jax[tpu], requirements-test.txt) compiles for an
abstract topology on this CPU host, and XLA's per-chip memory accounting is
read back from the executable.
"""

from __future__ import annotations

import json
import os

import gin
import pytest

from mhr_jax import gin_cli
from mhr_jax.experiment import pipeline  # registers the gin configurables

pytest.importorskip("libtpu", reason="the compile stage needs libtpu (jax[tpu])")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH = [os.path.join(ROOT, "configs"), ROOT]


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_tiny_compiles_for_v5e_2x2_split_over_model(tmp_path):
  # The embedded default (tiny T5, MHR over 24 synthetic tasks); scanned
  # layers and q/v adapters keep the TPU compile short (all_linear: 3x the time).
  gin_cli.parse([os.path.join(ROOT, "configs", "default.gin")], [
      "run.stage = 'compile'", f"run.output_dir = '{tmp_path}'",
      "mhr_jax.MeshConfig.topology = 'v5e:2x2'", "mhr_jax.MeshConfig.model = 2",
      "mhr_jax.T5Config.scan_layers = True", "mhr_jax.AdapterConfig.target_modules = 'qv'",
      "compile_steps.steps = ['multitask_train']", "compile_steps.correct_flops = False",
  ], SEARCH)
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
