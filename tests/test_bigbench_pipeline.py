"""configs/experiments/bigbench.gin end to end through run.py on fixture BIG-bench tasks.

A fixture sdist (BIG-bench's JSON task format) is prepared into a cache; run.py runs the
experiment's pipeline (multi-task pre-training on the training tasks, MHR few-shot
adaptation to the held-out ones) with a micro model and a few steps. The outputs a
user reads are checked against BIG-bench's own rules recomputed here from the fixture
JSON: multiple_choice_grade credits target_scores[predicted choice] (ties count),
duplicates are dropped, a generative answer counts when it equals any target, and the
truncation report gives the share of training examples longer than the lengths.
"""

from __future__ import annotations

import json
import os
import re

import gin
import numpy as np
import pytest

import run as run_cli
import tasks
from tasks import bigbench, registry, splits
from tasks.bigbench import fetch
from tests.task_fixtures import BB_GEN_TASK, BB_MC_TASK, write_bigbench_sdist
from tests.utils import MICRO

# Held out by tasks.splits.is_heldout (a hash of the name), as toy_gen is: 30 distinct
# questions, each listed three times; three of four choices tie at the top score. The
# listed target is the first of them, and the choices differ in length from example to
# example, so a fresh model often prefers another tied choice (credited all the same).
_WORDS = ["a", "bb", "stone", "river", "x y z", "cloud", "q"]
TIES_TASK = {
    "name": "fixture_ties4", "description": "ties and duplicates", "keywords": [],
    "metrics": ["multiple_choice_grade"], "preferred_score": "multiple_choice_grade",
    "examples": [{"input": f"Pick one for word{i}.",
                  "target_scores": {_WORDS[(i + j) % 7]: int(j < 3) for j in range(4)}}
                 for i in range(30) for _ in range(3)],
}
INPUT_LENGTH = 76  # cuts the toy_mc prompts of two-digit numbers (76 bytes + EOS)


@pytest.fixture
def fixture_bigbench(tmp_path, monkeypatch):
  cache = fetch.prepare(str(tmp_path / "bb"), download=lambda dest: write_bigbench_sdist(
      os.path.join(dest, fetch.SDIST), more_tasks={"fixture_ties4": TIES_TASK}))
  monkeypatch.setenv("MHR_JAX_BIGBENCH_DIR", cache)
  registry.remove_family(bigbench.FAMILY)
  tasks.register_defaults()
  gin.clear_config()
  yield cache
  gin.clear_config()
  registry.remove_family(bigbench.FAMILY)


def _lines(path):
  with open(path) as f:
    return [json.loads(l) for l in f]


@pytest.mark.heavy
def test_bigbench_config_end_to_end_on_fixture_tasks(fixture_bigbench, tmp_path):
  assert tasks.heldout_tasks("bigbench") == ["bigbench_fixture_ties4", "bigbench_toy_gen"]
  out = str(tmp_path / "run")
  overrides = [b.replace(" ", "") for b in MICRO if not b.startswith(("adapt_heldout.tasks",
                                                                       "mu_zero_shot"))]
  argv = (["--gin_file=configs/experiments/bigbench.gin", f"--gin.run.output_dir='{out}'"] +
          [f"--gin.{b}" for b in overrides] +
          [f"--gin.mhr_jax.DataConfig.input_length={INPUT_LENGTH}",
           "--gin.mhr_jax.DataConfig.target_length=8", "--gin.adapt_heldout.k=2",
           "--gin.adapt_heldout.seeds=(0,)", "--gin.adapt_heldout.max_eval_examples=None",
           "--gin.mhr_jax.AdapterConfig.n_heads=2",
           "--gin.mhr_jax.AdapterConfig.target_modules='self_attention_qv'"])  # less to compile
  assert run_cli.main(argv) == 0

  # Truncation: per training task, the share of its training split longer than the
  # lengths allow (one position is EOS), from BIG-bench's formatting of the fixture JSON.
  with open(os.path.join(out, "multitask", "truncation.json")) as f:
    report = {r["task"]: r for r in json.load(f)}
  assert sorted(report) == registry.family("bigbench").train_tasks
  _, records, _ = bigbench.parse_examples(BB_MC_TASK)
  train = splits.split_examples("bigbench_toy_mc", records)["train"]
  cut = np.mean([len(r["inputs"].encode()) > INPUT_LENGTH - 1 for r in train])
  assert 0 < cut < 1 and report["bigbench_toy_mc"]["inputs"] == pytest.approx(cut)
  assert report["bigbench_toy_mc"]["n_train"] == len(train)

  with open(os.path.join(out, "adapt_mhr", "results.json")) as f:
    results = {r["task"]: r for r in json.load(f)["records"]}
  assert sorted(results) == ["bigbench_fixture_ties4", "bigbench_toy_gen"]

  # Multiple choice: every test example once (duplicates dropped), graded by
  # multiple_choice_grade: the predicted choice's target score, so a tied choice that
  # is not the listed target still earns full credit.
  _, records, counts = bigbench.parse_examples(TIES_TASK)
  assert counts["duplicates"] == 60
  test = splits.split_examples("bigbench_fixture_ties4", records)["test"]
  lines = _lines(os.path.join(out, "adapt_mhr", "predictions", "bigbench_fixture_ties4_s0.jsonl"))
  assert [l["input"] for l in lines] == [r["inputs"] for r in test]
  for line in lines:
    i = int(re.search(r"for word(\d+)\.", line["input"]).group(1))
    scores = TIES_TASK["examples"][3 * i]["target_scores"]
    assert line["prediction"] == line["choices"][int(np.argmax(line["choice_log_likelihoods"]))]
    assert line["score"] == scores[line["prediction"]]
    assert scores[line["target"]] == 1
  assert any(l["prediction"] != l["target"] and l["score"] == 1 for l in lines), lines  # a tie
  assert results["bigbench_fixture_ties4"]["accuracy"] == pytest.approx(
      100 * np.mean([l["score"] for l in lines]))

  # Generation: exact match against any of the example's targets.
  _, records, _ = bigbench.parse_examples(BB_GEN_TASK)
  test = splits.split_examples("bigbench_toy_gen", records)["test"]
  lines = _lines(os.path.join(out, "adapt_mhr", "predictions", "bigbench_toy_gen_s0.jsonl"))
  assert [l["input"] for l in lines] == [r["inputs"] for r in test]
  for line, record in zip(lines, test):
    refs = [record["targets"]] if isinstance(record["targets"], str) else record["targets"]
    assert line["target"] == refs
    assert line["score"] == float(line["prediction"].strip() in [r.strip() for r in refs])
  assert results["bigbench_toy_gen"]["exact_match"] == pytest.approx(
      100 * np.mean([l["score"] for l in lines]))
  assert os.path.exists(os.path.join(out, "multitask", "routing.png"))
  assert os.path.exists(os.path.join(out, "summary.md"))
