"""benchmarks/method_comparison.py: method groups, the RESULTS.md table, one tiny run."""

from __future__ import annotations

import json
import math
import os

import pytest

from benchmarks import method_comparison as mc
from tests.utils import MICRO


def test_groups_follow_the_method_config_files():
  groups = mc.group_methods(mc.DEFAULT_METHODS)
  assert groups == {"full": ["lora", "ia3", "full"], "shared_lora": ["shared_lora"],
                    "shared_ia3": ["shared_ia3"],
                    "poly": ["poly", "poly_z", "poly_mu"], "mhr": ["mhr", "mhr_z", "mhr_mu"]}


def _summary(em_by_task: dict[str, list[float]]) -> dict:
  from mhr_jax.evaluation.results import aggregate  # pylint: disable=g-import-not-at-top
  records = [{"task": t, "seed": s, "exact_match": v, "rouge_l": v + 1.0}
             for t, values in em_by_task.items() for s, v in enumerate(values)]
  return aggregate(records)


def test_results_markdown_orders_rows_and_reports_95_percent_intervals():
  summaries = {"mhr": _summary({"a": [10.0, 20.0], "b": [30.0, 40.0]}),
               "lora": _summary({"a": [5.0, 5.0], "b": [15.0, 25.0]})}
  text = mc.results_markdown(summaries, {"full": ["lora"], "mhr": ["mhr"]},
                             command="python benchmarks/method_comparison.py", commit="abc123",
                             machine={"cpu_model": "Test CPU", "cpu_count": 2, "jax": "0.x"},
                             settings={"adapt_heldout.k": 16}, wall_s={"full": 12.0, "mhr": 30.0})
  rows = [l for l in text.splitlines() if l.startswith("| lora |") or l.startswith("| mhr |")]
  # lora first (baselines lead); task means 5 / 20 -> 12.5. Seed variances (ddof 1) 0 and
  # 50: standard error sqrt(0/2 + 50/2) / 2 = 2.5, t(0.975, df 2) = 4.303 -> ± 10.76.
  assert rows[0] == "| lora | full | 12.50 ± 10.76 | 13.50 ± 10.76 | 2 |"
  # mhr: (15 + 35) / 2 = 25; variances 50 and 50: sqrt(50) / 2 * 4.303 = 15.21.
  assert rows[1] == "| mhr | mhr | 25.00 ± 15.21 | 26.00 ± 15.21 | 2 |"
  assert "Ordering by exact match: mhr > lora." in text
  assert "| a | 5.0 | 15.0 |" in text and "| b | 20.0 | 35.0 |" in text
  assert "Command: `python benchmarks/method_comparison.py`" in text and "Test CPU" in text
  assert "| mhr | mhr | 30 |" in text
  one_run = mc.results_markdown({"mhr": _summary({"a": [10.0], "b": [30.0]})}, {"mhr": ["mhr"]},
                                command="c", commit="c", machine={}, settings={}, wall_s={})
  assert "| mhr | mhr | 20.00 (one run) | 21.00 (one run) | 1 |" in one_run  # not "± nan"


def test_the_spread_over_pre_trainings_is_an_interval_over_runs():
  summaries = {"mhr": _summary({"a": [10.0, 20.0], "b": [30.0, 40.0]})}  # task mean 25
  report = {"train_exact_match": 99.0, "routing_recovery": {"mean_over_heads": 0.5}}
  text = mc.results_markdown(
      summaries, {"mhr": ["mhr"]}, command="c", commit="c", machine={},
      settings={"adapt_heldout.k": 16}, wall_s={},
      spread={"mhr": {0: summaries["mhr"], 1: _summary({"a": [30.0], "b": [40.0]}),
                      2: _summary({"a": [20.0], "b": [50.0]})}},
      spread_multitask={"mhr": {0: report, 1: {**report, "train_exact_match": 98.0}, 2: {}}})
  assert "## Spread over multi-task pre-trainings" in text and "k = 16" in text
  # Runs 25, 35, 35: mean 31.67, std (ddof 1) 5.774, se 3.333, t(0.975, 2) 4.303 -> 14.34.
  assert "| mhr | 25.00 | 35.00 | 35.00 | 31.67 ± 14.34 |" in text
  assert "| mhr | 99.00 / 0.500 | 98.00 / 0.500 |  |" in text
  from mhr_jax.evaluation.intervals import runs_interval  # pylint: disable=g-import-not-at-top
  assert runs_interval([7.0])["mean"] == 7.0 and math.isnan(runs_interval([7.0])["half_width"])


def test_multitask_seeds_repeat_the_chosen_groups_under_their_own_seed(tmp_path, monkeypatch):
  import gin  # pylint: disable=g-import-not-at-top
  from mhr_jax.experiment import pipeline  # pylint: disable=g-import-not-at-top
  runs = []

  def run():  # the pipeline as gin configures it, recorded instead of trained
    seed, adapt = mc._multitask_seed(), gin.query_parameter("run.adapt_methods")
    runs.append((os.path.relpath(gin.query_parameter("run.output_dir"), tmp_path), seed,
                 tuple(adapt), tuple(gin.query_parameter("run.zero_shot_methods"))))
    return {m: _summary({"a": [10.0 * seed + len(m)], "b": [20.0 * seed + len(m)]})
            for m in adapt}

  monkeypatch.setattr(pipeline, "run", run)
  monkeypatch.setattr(mc, "trainable_parameters", lambda *a: {})
  argv = ["--methods", "mhr,mhr_z,shared_lora", "--multitask_seeds", "1,2",
          "--multitask_seed_methods", "mhr_z", "--shots", "", "--quiet",
          "--output_dir", str(tmp_path / "out"), "--results", str(tmp_path / "R.md")]
  assert mc.main(argv) == 0
  assert runs == [("out/mhr", 0, ("mhr", "mhr_z"), ()),
                  ("out/shared_lora", 0, ("shared_lora",), ()),
                  ("out/multitask_seed1/mhr", 1, ("mhr_z",), ()),
                  ("out/multitask_seed2/mhr", 2, ("mhr_z",), ())]
  text = (tmp_path / "R.md").read_text()
  # mhr_z: task means 5, 20, 35 over seeds 0, 1, 2 (std 15, se 8.66, t(0.975, 2) 4.303).
  assert "| mhr_z | 5.00 | 20.00 | 35.00 | 20.00 ± 37.26 |" in text
  assert "| mhr |" not in text.split("## Spread")[1].split("##")[0]
  with pytest.raises(SystemExit):  # the main run's own seed is no repeat
    mc.main([a if a != "1,2" else "0" for a in argv])


@pytest.mark.heavy
def test_one_group_runs_and_writes_results(tmp_path):
  results = tmp_path / "RESULTS.md"
  notes = mc.NOTES_MARKER + "\n\n## Discussion\n\nWritten by hand.\n"
  results.write_text("# old numbers\n| shared_lora | 99.99 |\n\n" + notes)
  argv = ["--methods", "shared_lora", "--output_dir", str(tmp_path / "out"), "--results",
          str(results), "--quiet", "--shots", "4,16"] + [f"--gin.{b.replace(' ', '')}" for b in MICRO]
  assert mc.main(argv) == 0
  text = results.read_text()
  assert "| shared_lora | shared_lora |" in text and "seeds" in text
  assert "--methods shared_lora" in text
  assert "99.99" not in text and text.endswith(notes)  # numbers replaced, notes kept
  assert (tmp_path / "shots.png").stat().st_size > 0 and "| k = 4 | k = 16 |" in text
  assert "training-task exact match" in text
  summaries = json.loads((tmp_path / "out" / "summaries.json").read_text())
  assert summaries["shared_lora"]["average"]["exact_match"]["n"] == 2  # MICRO's two seeds
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # nothing half-written


def test_bad_arguments_name_the_valid_choices(capsys):
  with pytest.raises(SystemExit):
    mc.main(["--methods", "mhr,bogus"])
  assert "unknown method(s) ['bogus']" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    mc.main(["--steps=3"])
  assert "--gin.NAME=VALUE" in capsys.readouterr().err


def test_saved_results_are_reused_only_for_the_same_committed_code_and_settings(tmp_path):
  path = str(tmp_path / "g" / "comparison.json")
  key = {"code": "abc,def,123", "overrides": ["adapt_heldout.k = 4"], "method": "mhr", "k": 4}
  mc._save_done(path, key, {"summary": {"average": {}}, "wall_s": 1.0, "cpu_s": 2.0})
  assert mc._reuse(path, dict(key))["cpu_s"] == 2.0
  assert mc._reuse(path, {**key, "overrides": []}) is None  # other settings
  assert mc._reuse(path, {**key, "code": "abc,def,124"}) is None  # other code
  mc._save_done(path, {**key, "code": "abc+uncommitted changes"}, {"summary": {}})
  assert mc._reuse(path, {**key, "code": "abc+uncommitted changes"}) is None  # never dirty
  assert mc._reuse(str(tmp_path / "missing.json"), key) is None
