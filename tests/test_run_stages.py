"""run.py end to end: every config parses, every method runs a few steps, CLI errors."""

from __future__ import annotations

import dataclasses
import glob
import json
import os

import gin
import numpy as np
import pytest

import run as run_cli
from mhr_jax import gin_cli
from mhr_jax.adapters.methods import METHODS, Heads
from mhr_jax.experiment import pipeline, stages  # registers the gin configurables
from mhr_jax.experiment.tensorboard import read_scalars
from mhr_jax.training.trainer import Trainer
from tests.utils import MICRO, record_evaluations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
SEARCH = [CONFIGS, ROOT]

METHOD_FILES = sorted(glob.glob(os.path.join(CONFIGS, "methods", "*.gin")))


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIGS, "**", "*.gin"),
                                                  recursive=True)),
                         ids=lambda p: os.path.relpath(p, CONFIGS))
def test_every_config_parses(path):
  files = [path]
  if "/methods/" in path:  # method files refine an experiment
    files = [os.path.join(CONFIGS, "experiments", "synthetic.gin"), path]
  gin_cli.parse(files, [], SEARCH)
  if "/methods/" in path or path.endswith("default.gin"):
    method = gin.query_parameter("adapt_heldout.method")
    assert method in METHODS


def _method_groups() -> dict[str, list[str]]:
  """Method config files grouped by the multi-task stage they share."""
  groups: dict[str, list[str]] = {}
  for path in METHOD_FILES:
    gin.clear_config()
    gin_cli.parse([os.path.join(CONFIGS, "experiments", "synthetic.gin"), path], [], SEARCH)
    groups.setdefault(gin.query_parameter("train_multitask.method"), []).append(path)
  gin.clear_config()
  return groups


GROUPS = _method_groups()
# Each group's pipeline costs ~30-160 CPU-s (compilation): three groups are left to the
# evidence of others. poly's is mhr's with one routing head (checked below);
# shared_lora's pipeline runs in test_method_comparison.py::test_one_group_runs_and_writes_results,
# and shared_ia3's is that one with the (IA)^3 adapter, whose adaptation the full group runs.
RUN_GROUPS = sorted(set(GROUPS) - {"poly", "shared_lora", "shared_ia3"})


def test_method_files_cover_every_method():
  names = {os.path.basename(p)[:-4] for p in METHOD_FILES}
  assert names == set(METHODS), names ^ set(METHODS)


def test_poly_configs_are_the_mhr_configs_with_one_head():
  pairs = [(p, p.replace("/poly", "/mhr")) for p in GROUPS["poly"]]
  assert sorted(m for _, m in pairs) == sorted(GROUPS["mhr"])
  for poly_path, mhr_path in pairs:
    with open(poly_path) as f, open(mhr_path) as g:
      assert f.read().replace("poly", "mhr") == g.read()
    poly = METHODS[os.path.basename(poly_path)[:-4]]
    mhr = METHODS[os.path.basename(mhr_path)[:-4]]
    assert poly.heads is Heads.ONE and mhr.heads is Heads.MANY
    assert dataclasses.replace(poly, name=mhr.name, heads=Heads.MANY) == mhr


@pytest.mark.parametrize("multitask_method", RUN_GROUPS)
@pytest.mark.heavy
def test_method_configs_run_few_steps(multitask_method, tmp_path, monkeypatch):
  """Each group: one multi-task stage, then every method config's adaptation."""
  rates = []  # the learning rate of each Trainer: multi-task first, then each method's
  init = Trainer.__init__

  def recording_init(self, model, optimizer_config, *args, **kwargs):
    rates.append(optimizer_config.learning_rate)
    init(self, model, optimizer_config, *args, **kwargs)

  monkeypatch.setattr(Trainer, "__init__", recording_init)
  restored = []  # the directory of every Orbax restore
  restore = stages.orbax_store.CheckpointStore.restore

  def recording_restore(self, *args, **kwargs):
    restored.append(os.path.realpath(self.directory))
    return restore(self, *args, **kwargs)

  monkeypatch.setattr(stages.orbax_store.CheckpointStore, "restore", recording_restore)
  evaluations = record_evaluations(monkeypatch)
  files = GROUPS[multitask_method]
  names = [os.path.basename(p)[:-4] for p in files]
  out = str(tmp_path / "run")
  zero_shot = [m for m in names if m.endswith("_mu")]  # μ zero-shot after the adaptations
  gin_cli.parse([os.path.join(CONFIGS, "experiments", "synthetic.gin"), files[0]],
                MICRO + [f"run.output_dir = '{out}'", "run.stage = 'pipeline'",
                         f"run.adapt_methods = {names!r}",
                         f"run.zero_shot_methods = {zero_shot!r}"], SEARCH)
  summaries = pipeline.run()
  assert sorted(summaries) == sorted(names + [f"{m} zero-shot" for m in zero_shot])
  # One restore of the multi-task checkpoint serves the report and every method's stage.
  assert restored == [os.path.realpath(os.path.join(out, "multitask", "checkpoints"))]
  for method in zero_shot:
    stage_dir = os.path.join(out, f"zero_shot_{method}")
    with open(os.path.join(stage_dir, "train_history.json")) as f:
      assert [h["step"] for h in json.load(f)] == [1, 2]  # trained on the training mixture
    with open(os.path.join(stage_dir, "results.json")) as f:
      records = json.load(f)["records"]
    assert [r["task"] for r in records] == ["synthetic_up_def_then_up_mno_then_up_pqr"]
  # synthetic.gin: adapters adapt at 1e-2, full fine-tuning at 1e-3 (learning_rate_by_method).
  assert rates == ([1e-2] + [1e-3 if m == "full" else 1e-2 for m in names] +
                   [1e-3] * len(zero_shot))  # mu_zero_shot's default optimizer
  # Every reported score is the one recomputed independently from the predictions
  # made (the training tasks of the multi-task checkpoint, the adaptations in order, then
  # the zero-shot runs).
  records = []
  for stage_dir in (["eval"] + [f"adapt_{m}" for m in names] +
                    [f"zero_shot_{m}" for m in zero_shot]):
    with open(os.path.join(out, stage_dir, "results.json")) as f:
      records += json.load(f)["records"]
  assert len(records[:24]) == 24 and {r["seed"] for r in records[:24]} == {0}  # training tasks
  assert [r["seed"] for r in records[24:24 + 2 * len(names)]] == [0, 1] * len(names)
  assert len(evaluations) == len(records)
  for r, expected in zip(records, evaluations):
    assert {m: r[m] for m in expected} == pytest.approx(expected)
  with open(os.path.join(out, "summary.md")) as f:
    summary = f.read()
  assert all(f"| {m} |" in summary for m in names)
  # TensorBoard holds every logged metric at every logged step, as train_history.json.
  scalars = read_scalars(os.path.join(out, "multitask", "tensorboard"))
  with open(os.path.join(out, "multitask", "train_history.json")) as f:
    history = json.load(f)
  assert [step for step, _ in scalars[f"multitask/{multitask_method}/loss"]] == [1, 2, 3]
  assert [h["step"] for h in history] == [1, 2, 3]  # MICRO: 3 steps, logged at each
  for name in ("loss", "grad_norm", "learning_rate", "tokens_per_s"):
    assert [v for _, v in scalars[f"multitask/{multitask_method}/{name}"]] == pytest.approx(
        [h[name] for h in history], rel=1e-6)
  routed = multitask_method in ("poly", "mhr")
  assert os.path.exists(os.path.join(out, "multitask", "routing.png")) == routed
  # The summary reports the training tasks and, for routed methods, routing recovery.
  assert "Training tasks after multi-task pre-training" in summary
  assert ("Routing recovery" in summary) == routed
  assert os.path.exists(os.path.join(out, "multitask", "routing_recovery.png")) == routed
  if multitask_method == "mhr":  # the eval stage restores the Orbax checkpoint
    two = ["synthetic_up_def_then_up_mno_then_up_vwx", "synthetic_up_jkl_then_up_stu_then_up_vwx"]
    with gin.unlock_config():  # (the 24 training tasks were evaluated above, in the report)
      gin.bind_parameter("evaluate_checkpoint.max_eval_examples", 2)
      gin.bind_parameter("evaluate_checkpoint.tasks", two)
    evaluated = pipeline.run(stage="eval", output_dir=out)
    assert sorted(evaluated) == sorted(two + ["average"]), sorted(evaluated)
    assert len(restored) == 2  # a run of its own reads the checkpoint again
    assert os.path.exists(os.path.join(out, "eval", "results.md"))


@pytest.mark.parametrize("argv, needle", [
    (["--gin.run.stage=train"],
     "valid choices: ['multitask', 'adapt', 'zero_shot', 'eval', 'pipeline', 'compile']"),
    (["--gin.run.zero_shot_methods=['mhr']"],
     "unknown zero-shot method 'mhr' (did you mean 'mhr_mu'?); valid choices: ['poly_mu', "
     "'mhr_mu']"),
    (["--gin.run.bogus=1"], "doesn't have a parameter named 'bogus'"),
    (["--gin_file=does_not_exist.gin"], "'does_not_exist.gin' not found"),
    (["--gin.run.stage=adapt", "--gin.run.output_dir=/nonexistent/x"],
     "no multi-task checkpoint under '/nonexistent/x/multitask'"),
    (["--gin.train_multitask.hf_checkpoint='/nonexistent/ckpt'", "--gin.run.stage=multitask",
      "--gin.run.output_dir=/tmp/unused"], "hf_checkpoint='/nonexistent/ckpt' is not a directory"),
    (["--gin.run.adapt_methods=['mhr','bogus']"], "unknown method 'bogus'"),
    (["--gin.adapt_heldout.learning_rate_by_method={'fulll': 1e-3}", "--gin.run.stage=adapt",
      "--gin.run.output_dir=/tmp/unused"], "unknown method(s) ['fulll']"),
])
def test_cli_errors_name_the_bad_value(argv, needle, capsys):
  assert run_cli.main(argv) == 2
  err = capsys.readouterr().err
  assert needle in err
  assert len(err.strip().splitlines()) == 1, err


def test_the_compilation_cache_is_for_every_stage_but_compile(tmp_path, monkeypatch):
  """run.py's cache (compilation_cache=True) is never on while the compile stage times XLA."""
  cache_on = []
  monkeypatch.setattr(pipeline.validation, "check_run", lambda *a: None)  # (makes output_dir)
  for d in ("c", "m1", "m2"):
    os.makedirs(tmp_path / d)
  monkeypatch.setattr(pipeline, "enable_compilation_cache", lambda: cache_on.append(True))
  monkeypatch.setattr(pipeline.compile_stage, "compile_steps", lambda out: list(cache_on))
  monkeypatch.setattr(pipeline.stages, "train_multitask", lambda out: list(cache_on))
  assert pipeline.run(stage="compile", output_dir=str(tmp_path / "c"),
                      compilation_cache=True) == []
  assert pipeline.run(stage="multitask", output_dir=str(tmp_path / "m1")) == {"stage_dir": []}
  assert pipeline.run(stage="multitask", output_dir=str(tmp_path / "m2"),
                      compilation_cache=True) == {"stage_dir": [True]}
