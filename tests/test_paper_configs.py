"""The paper-scale configs run as written, on a tiny local HF checkpoint and fixture data.

Only the sizes shrink (sequence lengths, batch, steps, k, seeds); the
configs' own numerics stay on: bfloat16, scanned layers, rematerialisation,
a frozen backbone loaded from a Hugging Face directory with its spiece.model,
adapters on every linear layer, and each file's data families (P3 pre-training
-> T0 held-out tasks; Super-NaturalInstructions train -> test).
"""

from __future__ import annotations

import json
import os

import gin
import numpy as np
import pytest

import tasks
from mhr_jax import gin_cli
from mhr_jax.evaluation.predictions import predictions_path
from mhr_jax.experiment import pipeline, stages
from tasks import natural_instructions, p3, registry, t0
from tests.task_fixtures import (save_hf_checkpoint_with_vocab, t0_fixture_source,
                                 write_ni_clone, write_p3_dir)
from tests.utils import record_evaluations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")

SMALL = [
    "mhr_jax.DataConfig.input_length = 48", "mhr_jax.DataConfig.target_length = 8",
    "mhr_jax.DataConfig.batch_size = 4", "mhr_jax.DataConfig.eval_batch_size = 4",
    "train_multitask.steps = 2", "train_multitask.checkpoint_every = 2",
    "train_multitask.log_every = 1", "train_multitask.show_progress = False",
    "adapt_heldout.steps = 2", "adapt_heldout.seeds = (0,)", "adapt_heldout.k = 2",
    "adapt_heldout.log_every = 1", "adapt_heldout.max_eval_examples = 2",
    "adapt_heldout.show_progress = False",
    "mu_zero_shot.steps = 2", "mu_zero_shot.max_eval_examples = 2",
    "mu_zero_shot.show_progress = False",
    "multitask/mhr_jax.DataConfig.target_length = 8", "multitask/mhr_jax.DataConfig.batch_size = 4",
    "adapt/mhr_jax.DataConfig.batch_size = 4",
]
# The T0 run also selects the best of its evaluations (every step here): the optimistic option.
# One adaptation method (MHR) keeps it cheap: the other methods share its code paths.
T0_EXTRA = ["adapt_heldout.selection = 'best_of_evaluations'", "adapt_heldout.eval_every = 1",
            "run.adapt_methods = ['mhr']", "run.zero_shot_methods = []"]
# SNI: MHR only too (t5xl_sni.gin also adapts mhr_mu: test_run_stages runs that method).
SNI_EXTRA = ["run.adapt_methods = ['mhr']"]


@pytest.fixture
def checkpoint(tmp_path):
  # Every projection's width divisible by t0_3b.gin's 64 routing heads.
  return save_hf_checkpoint_with_vocab(str(tmp_path / "hf"), d_model=64, d_ff=64, num_heads=4,
                                       d_kv=16)


@pytest.fixture
def paper_data(tmp_path):
  """P3, T0 and NI families registered on fixtures; restored afterwards."""
  p3.register_p3(write_p3_dir(str(tmp_path / "p3")))
  t0.register_t0(source_fn=t0_fixture_source)
  # The paper's instance protocol, shrunk: the fixture's test task has 20 instances.
  natural_instructions.register_natural_instructions(
      write_ni_clone(str(tmp_path / "ni")), instances_per_train_task=8, test_instances=10)
  gin.clear_config()
  yield
  gin.clear_config()
  for family in (p3.FAMILY, natural_instructions.FAMILY):
    registry.remove_family(family)
  t0.register_t0()


@pytest.mark.parametrize("config, heldout, train_tasks", [
    # One routing row per P3 prompt, as the paper's use_t0_templates_as_tasks.
    ("t0_3b.gin", "t0_rte", ["p3_adversarial_qa_dbert_answer_the_following_q",
                             "p3_adversarial_qa_dbidaf_answer_the_following_q",
                             "p3_ag_news_classify", "p3_ag_news_which_section",
                             "p3_dream_answer_to_dialogue"]),
    ("t5xl_sni.gin", "ni_task003_gamma", ["ni_task001_alpha", "ni_task002_beta"]),
])
@pytest.mark.heavy
def test_paper_config_runs_on_a_local_checkpoint(config, heldout, train_tasks, checkpoint,
                                                 paper_data, tmp_path, monkeypatch):
  out = str(tmp_path / "run")
  evaluations = record_evaluations(monkeypatch)
  gin_cli.parse([os.path.join(CONFIGS, "experiments", config)],
                SMALL + [f"HF_CHECKPOINT = '{checkpoint}'", f"run.output_dir = '{out}'",
                         f"adapt_heldout.tasks = ['{heldout}']",
                         f"mu_zero_shot.tasks = ['{heldout}']"]
                + (T0_EXTRA if config == "t0_3b.gin" else SNI_EXTRA), [CONFIGS, ROOT])
  methods = gin.query_parameter("run.adapt_methods")
  zero_shot = gin.query_parameter("run.zero_shot_methods") if config == "t0_3b.gin" else []
  summaries = pipeline.run()
  assert sorted(summaries) == sorted(methods + [f"{m} zero-shot" for m in zero_shot])

  if config == "t0_3b.gin":  # the paper's aggregation is reported too
    with open(os.path.join(out, "adapt_mhr", "results.json")) as f:
      assert "median" in json.load(f)["summary"]["average"]["accuracy"]
  # The multi-task checkpoint: the checkpoint's architecture, bf16 compute, the mixture's ids.
  model_config, adapter, params, extra = stages.load_multitask(os.path.join(out, "multitask"))
  assert model_config.d_model == 64 and model_config.vocab_size == 126
  assert model_config.dtype == "bfloat16" and model_config.scan_layers and model_config.remat
  assert adapter.n_heads == gin.query_parameter("mhr_jax.AdapterConfig.n_heads")
  assert extra["task_ids"] == {name: i for i, name in enumerate(train_tasks)}
  assert extra["hf_checkpoint"] == checkpoint
  with open(os.path.join(out, "multitask", "train_history.json")) as f:
    history = json.load(f)
  assert all(np.isfinite(h["loss"]) for h in history)

  # The backbone stayed frozen at the checkpoint's values; the adapters moved.
  from mhr_jax.checkpoints.hf import load_hf_checkpoint  # pylint: disable=g-import-not-at-top
  _, pretrained = load_hf_checkpoint(checkpoint, scan_layers=True,  # the trained tree's layout
                                     param_dtype=model_config.param_dtype)
  from mhr_jax.param_tree import flatten as flatten_params  # pylint: disable=g-import-not-at-top
  flat, ref = flatten_params(params), flatten_params(pretrained)
  for key, value in ref.items():
    np.testing.assert_array_equal(np.asarray(flat[key]), np.asarray(value), err_msg=key)
    assert flat[key].dtype == np.dtype(model_config.param_dtype), key
  adapters = [k for k in flat if k not in ref]
  assert adapters  # adapter parameters exist, trained in float32 whatever the backbone's dtype
  assert {str(flat[k].dtype) for k in adapters} == {"float32"}

  # Each reported score is the one recomputed from the predictions (choice scores) made.
  runs = [("adapt", m) for m in methods] + [("zero_shot", m) for m in zero_shot]
  reported = evaluations
  if config == "t0_3b.gin":  # MHR evaluated after each of its 2 steps; the last is reported
    assert len(runs) == 1 and len(evaluations) == 2
    reported = evaluations[-1:]
  assert len(reported) == len(runs)
  for (stage, method), expected in zip(runs, reported):
    with open(os.path.join(out, f"{stage}_{method}", "results.json")) as f:
      records = json.load(f)["records"]
    assert [(r["task"], r["seed"]) for r in records] == [(heldout, 0)]
    assert "accuracy" in expected if heldout.startswith("t0_") else "rouge_l" in expected
    assert {m: records[0][m] for m in expected} == pytest.approx(expected)
    if config == "t0_3b.gin" and stage == "adapt":  # best of the per-step evaluations
      assert records[0]["accuracy_best_of_evals_optimistic"] == pytest.approx(
          max(e["accuracy"] for e in evaluations))
    # The reported evaluation's predictions are saved (best_of_evaluations included).
    with open(predictions_path(os.path.join(out, f"{stage}_{method}"), heldout, 0)) as f:
      lines = [json.loads(line) for line in f]
    assert lines and all(line["input"] and "prediction" in line for line in lines)
    if "accuracy" in expected:
      assert 100 * np.mean([line["score"] for line in lines]) == pytest.approx(
          records[0]["accuracy"])
  with open(os.path.join(out, "summary.md")) as f:
    summary = f.read()
  assert all(f"| {m} |" in summary for m in methods), summary
  # The configuration in force, written by every run.
  with open(os.path.join(out, "config.gin")) as f:
    assert "adapt_heldout.steps = 2" in f.read()
  if config == "t5xl_sni.gin":
    # Evaluation ran 4-beam search and the SNI metrics (normalised EM, sampled reference).
    operative = gin.operative_config_str()
    for line in ("Evaluator.num_beams = 4", "generation_metrics.normalize = True",
                 "generation_metrics.reference = 'sampled'",
                 "make_train_step.label_smoothing = 0.1"):
      assert line in operative, operative
