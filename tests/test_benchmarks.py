"""The timing benchmarks run from a checkout and write self-consistent JSON.

Smallest settings (one round, one timed step): what is checked is that the
scripts run end to end and that their ratios are the ratios of their own
medians, not any speed.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
  return proc.stdout


@pytest.mark.heavy
def test_routing_cost_quick(tmp_path):
  # Each variant is two compilations (~10-30 CPU-s each): run the two of one check (the
  # sparse routing update's; mhr8_over_lora is computed by the same code).
  wanted = ["tasks10", "sparse_tasks10000"]
  out = _run("routing_cost.py", "--quick", "--rounds", "1", "--steps", "1",
             "--variants", ",".join(wanted), "--out", str(tmp_path / "rc.json"))
  data = json.loads((tmp_path / "rc_quick.json").read_text())
  med = data["median_step_s"]
  assert sorted(med) == sorted(wanted)
  checks = data["checks"]
  assert sorted(checks) == ["sparse_tasks10000_over_tasks10"]
  assert checks["sparse_tasks10000_over_tasks10"]["value"] == pytest.approx(
      med["sparse_tasks10000"] / med["tasks10"])
  assert all(c["met"] == (c["value"] <= c["target"]) for c in checks.values())
  assert data["ratios"] == {}  # every other ratio needs a variant that did not run
  v = data["variants"]
  assert v["sparse_tasks10000"]["sparse_routing"] and not v["tasks10"]["sparse_routing"]
  assert v["sparse_tasks10000"]["trainable_params"] > 10 * v["tasks10"]["trainable_params"]
  assert "sparse routing update" in out and "targets:" in out


@pytest.mark.heavy
def test_speed_vs_peft_quick(tmp_path):
  out = _run("speed_vs_peft.py", "--quick", "--steps", "1", "--warmup", "1", "--threads", "1",
             "--out", str(tmp_path / "sp.json"))
  data = json.loads((tmp_path / "sp_quick.json").read_text())
  res = data["results"]
  assert set(res) == {"mhr_jax", "peft_torch_1threads"}
  # Same model on both sides: the same number of trainable parameters.
  assert res["mhr_jax"]["trainable_params"] == res["peft_torch_1threads"]["trainable_params"]
  ratio = res["peft_torch_1threads"]["median_step_s"] / res["mhr_jax"]["median_step_s"]
  assert data["ratio_throughput_mhr_jax_over_peft"] == pytest.approx(ratio)
  assert data["target_met"] == (ratio >= 2.0)
  assert "headline" in out
  assert not list(tmp_path.glob("*.tmp*"))  # written atomically
