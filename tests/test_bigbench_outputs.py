"""What a BIG-bench user reads: saved predictions, graded ties, the routing picture at
1,000 tasks, and a one-line error when the data are not prepared."""

from __future__ import annotations

import csv
import json

import jax
import numpy as np
import pytest
import seqio

import run as run_cli
import tasks
from mhr_jax.adapters.config import AdapterConfig
from mhr_jax.evaluation.evaluator import Evaluator
from mhr_jax.evaluation.routing_overview import group_routing, save_routing_picture
from mhr_jax.experiment.model_setup import init_params, param_shardings
from mhr_jax.models import T5, T5Config
from mhr_jax.partitioning import Partitioner, make_mesh
from tasks import bigbench, registry


@pytest.fixture(scope="module")
def micro_evaluator():
  config = T5Config(vocab_size=259, d_model=16, d_kv=4, d_ff=32, num_heads=2, num_layers=1,
                    num_decoder_layers=1, dropout_rate=0.0)
  model = T5(config, adapter=AdapterConfig(kind="lora", rank=2, target_modules="qv"))
  partitioner = Partitioner(make_mesh(devices=jax.devices()[:1]))
  params = init_params(model, jax.random.PRNGKey(0))
  return Evaluator(model, seqio.ByteVocabulary(), 24, 6, batch_size=4, partitioner=partitioner,
                   param_shardings=param_shardings(model, partitioner)), params


def test_predictions_saved_and_ties_graded_like_bigbench(micro_evaluator, tmp_path):
  evaluator, params = micro_evaluator
  examples = [{"inputs": f"Q: sides of a triangle {i}?\nA:", "task_id": 0,
               "choices": ["3", "three", "4"], "label": 0, "choice_scores": [1.0, 1.0, 0.0]}
              for i in range(3)]
  path = tmp_path / "p" / "mc_s0.jsonl"
  acc = evaluator.evaluate(params, examples, str(path))["accuracy"]
  lines = [json.loads(l) for l in path.read_text().splitlines()]
  assert [l["input"] for l in lines] == [ex["inputs"] for ex in examples]
  for line in lines:
    assert line["target"] == "3"
    best = int(np.argmax(line["choice_log_likelihoods"]))
    assert line["prediction"] == line["choices"][best]
    assert line["score"] == [1.0, 1.0, 0.0][best]  # "three" earns full credit too
  assert acc == pytest.approx(100 * np.mean([l["score"] for l in lines]))
  gen = [{"inputs": "say hi", "task_id": 0, "targets": ["hi", "hello"]}]
  path = tmp_path / "gen_s0.jsonl"
  metrics_ = evaluator.evaluate(params, gen, str(path))
  (line,) = [json.loads(l) for l in path.read_text().splitlines()]
  assert line["target"] == ["hi", "hello"] and isinstance(line["prediction"], str)
  assert 100 * line["score"] == metrics_["exact_match"]


def test_routing_picture_stays_readable_at_1000_tasks(tmp_path):
  from PIL import Image
  rng = np.random.default_rng(0)
  names = [f"bigbench_parent{i // 6}.sub{i % 6}" for i in range(996)] + [
      f"bigbench_single{i}" for i in range(4)]
  probs = rng.dirichlet(np.ones(8), size=(1000, 4))
  paths = save_routing_picture(probs, str(tmp_path), names, title="t")
  group_names, means, sizes = group_routing(probs, names)
  assert len(group_names) == 170 and sizes.sum() == 1000
  np.testing.assert_allclose(means[0], probs[:6].mean(0))
  with open(paths["csv"]) as f:
    rows = list(csv.reader(f))
  assert rows[0][:3] == ["task", "group", "h0_s0"] and len(rows) == 1001
  np.testing.assert_allclose(np.asarray(rows[7][2:], float), probs[6].ravel(), atol=1e-5)
  width, height = Image.open(paths["png"]).size
  assert height < 2600 and width < 1600, (width, height)  # was 2,198 x 27,745 at 959 tasks


def test_missing_bigbench_is_a_one_line_error_naming_prepare(tmp_path, monkeypatch, capsys):
  monkeypatch.setenv("MHR_JAX_BIGBENCH_DIR", str(tmp_path / "nothing"))
  registry.remove_family(bigbench.FAMILY)
  tasks.register_defaults()
  with pytest.raises(FileNotFoundError, match="python -m tasks.bigbench prepare"):
    tasks.task_id_table("bigbench_train")
  assert run_cli.main(["--gin_file=configs/experiments/bigbench.gin",
                       "--gin.run.output_dir='/tmp/unused'"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "python -m tasks.bigbench prepare" in err[0], err
