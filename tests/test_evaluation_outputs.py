"""Results aggregation, Markdown table, routing heatmap, rank classification plumbing."""

from __future__ import annotations

import csv
import json
import os

import jax
import numpy as np
import pytest
import seqio

from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.evaluation.evaluator import Evaluator
from mhr_jax.evaluation.rank_classification import choice_scores
from mhr_jax.evaluation.results import aggregate, markdown_table, save_results
from mhr_jax.evaluation.routing_overview import save_routing_picture
from mhr_jax.evaluation.routing_plot import routing_probabilities, save_routing_heatmap
from mhr_jax.experiment import report
from mhr_jax.experiment.model_setup import init_params, param_shardings
from mhr_jax.models import T5, T5Config
from mhr_jax.partitioning import Partitioner, make_mesh
from tasks.metrics import rank_classification_accuracy


def test_aggregate_means_and_seed_std(tmp_path):
  records = [{"task": "a", "seed": 0, "em": 10.0}, {"task": "a", "seed": 1, "em": 30.0},
             {"task": "b", "seed": 0, "em": 50.0}, {"task": "b", "seed": 1, "em": 70.0}]
  s = aggregate(records)
  assert s["a"]["em"] == {"mean": 20.0, "std": 10.0, "median": 20.0, "n": 2}
  assert s["average"]["em"]["mean"] == 40.0
  # Seed 0 averages 30, seed 1 averages 50: std over seeds of the task average.
  assert s["average"]["em"]["std"] == 10.0
  summary = save_results(str(tmp_path), records, title="t")
  table = (tmp_path / "results.md").read_text()
  assert "| a | 20.00 ± 10.00 |" in table and "| **average** | 40.00 ± 10.00 |" in table
  assert json.loads((tmp_path / "results.json").read_text())["summary"] == summary
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp_")]


def test_routing_probabilities_average_layers_and_normalise(tmp_path):
  z1 = np.zeros((2, 1, 3)); z1[0, 0, 0] = 50.0  # task 0 strongly prefers skill 0
  z2 = np.zeros((2, 1, 3))
  params = {"enc": {"q": {"adapter": {"router": {"routing_logits": z1}}}},
            "dec": {"q": {"adapter": {"router": {"routing_logits": z2}}}}}
  p = routing_probabilities(params)
  np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-9)
  w = 1 / (1 + np.exp(-0.0))
  expected_layer1 = np.array([1.0, w, w]) / (1.0 + 2 * w)
  np.testing.assert_allclose(p[0, 0], (expected_layer1 + np.ones(3) / 3) / 2, atol=1e-9)
  np.testing.assert_allclose(p[1, 0], np.ones(3) / 3, atol=1e-9)
  with pytest.raises(ValueError, match="no parameter named 'routing_logits'"):
    routing_probabilities({"kernel": np.zeros(2)})
  path = save_routing_heatmap(p, str(tmp_path / "r.png"), ["t0", "t1"])
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_routing_picture_of_64_heads_draws_eight_and_keeps_all_in_the_csv(tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  probs = np.random.default_rng(0).dirichlet(np.ones(8), size=(5, 64))  # t0_3b.gin's heads
  paths = save_routing_picture(probs, str(tmp_path), [f"task{i}" for i in range(5)])
  width, _ = Image.open(paths["png"]).size
  assert width < 4000, width  # 64 panels side by side: ~25,000 px
  with open(paths["csv"]) as f:
    header = next(csv.reader(f))
  assert len(header) == 2 + 64 * 8 and header[-1] == "h63_s7"


class _Vocab:
  def encode(self, s):
    return [ord(c) + 2 for c in s]


def test_choice_scores_regroup_per_example_and_accuracy():
  examples = [{"inputs": "x", "choices": ["a", "bb", "c"], "label": 1, "task_id": 0},
              {"inputs": "y", "choices": ["dd", "e"], "label": 0, "task_id": 0}]

  calls = []

  def score_fn(batch):  # score = number of target tokens, so longer choices win
    calls.append(batch["choice_tokens"].shape)
    return (batch["choice_tokens"] > 0).sum(-1).astype(np.float32)

  scores = choice_scores(score_fn, _Vocab(), examples, 4, 4, batch_size=3)
  assert calls == [(1, 3, 4), (1, 3, 4)]  # one example (all its choices) per call
  np.testing.assert_array_equal(scores[0], [2, 3, 2])
  np.testing.assert_array_equal(scores[1], [3, 2])
  assert rank_classification_accuracy(scores, [1, 0]) == 100.0
  assert rank_classification_accuracy(scores, [0, 1]) == 0.0


def test_evaluator_checks_task_ids_on_the_host():
  config = T5Config(vocab_size=259, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2,
                    dropout_rate=0.0)
  model = T5(config, adapter=AdapterConfig(kind="poly", rank=2, n_tasks=3, n_skills=2,
                                           n_heads=2, target_modules="qv"))
  partitioner = Partitioner(make_mesh(devices=jax.devices()[:1]))
  params = init_params(model, jax.random.PRNGKey(0))
  evaluator = Evaluator(model, seqio.ByteVocabulary(), 8, 4, batch_size=2,
                        partitioner=partitioner,
                        param_shardings=param_shardings(model, partitioner))
  examples = [{"inputs": "ab", "targets": ["b"], "task_id": t} for t in (0, 2, 1)]
  scores = evaluator.evaluate(params, examples)
  assert set(scores) == {"exact_match", "rouge_l"}
  with pytest.raises(ValueError, match=r"task ids \[3\] are out of range.*n_tasks=3"):
    evaluator.evaluate(params, examples + [{"inputs": "c", "targets": ["d"], "task_id": 3}])


def test_stage_average_line_names_its_spread():
  """The stage's closing line prints std over seeds, labelled (the final table prints 95 % CIs)."""
  records = [{"task": t, "seed": s, "exact_match": v}
             for t, s, v in [("a", 0, 10.0), ("b", 0, 30.0), ("a", 1, 50.0), ("b", 1, 70.0)]]
  line = report.average_line(aggregate(records))
  # per-seed means 20 and 60: mean 40, population std 20
  assert line == "exact_match 40.00 ± 20.00 (± std over 2 seeds)"
  one = report.average_line(aggregate([r for r in records if r["seed"] == 0]))
  assert one == "exact_match 20.00 (one seed)"  # no "± 0.00" for a single run
  # results.md's table likewise: 'mean ± std' over seeds, the bare value for one seed.
  assert "| a | 30.00 ± 20.00 |" in markdown_table(aggregate(records))
  table = markdown_table(aggregate([r for r in records if r["seed"] == 0]))
  assert "| a | 10.00 |" in table and "| **average** | 20.00 |" in table and "±" not in table
  assert report.average_line({}) == ""
