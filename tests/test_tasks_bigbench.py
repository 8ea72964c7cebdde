"""BIG-bench: JSON schema parsing (both example kinds, prefixes, subtasks), prepare, register.

Never downloads: `prepare` is given a fake sdist built here in BIG-bench's layout.
"""

import json
import os

import pytest

import tasks
from tasks import bigbench, registry, sources, splits
from tasks.bigbench import fetch as bb_prepare
from tests.task_fixtures import (BB_GEN_TASK, BB_MC_TASK, BB_SUBTASK, fake_bigbench_download,
                                 write_bigbench_sdist)

MC_TASK, GEN_TASK, SUBTASK = BB_MC_TASK, BB_GEN_TASK, BB_SUBTASK


def test_multiple_choice_examples_use_target_scores_and_prefixes():
  kind, records = bigbench.parse_task(MC_TASK)
  assert kind == sources.MULTIPLE_CHOICE and len(records) == 20
  r = records[3]
  assert r["choices"] == ["yes", "no"] and r["label"] == 1 and r["targets"] == "no"
  assert r["inputs"] == ("Answer the question.\n\nQuestion: Is 3 even?"
                         "\n option: yes\n option: no\nAnswer:")
  assert records[4]["label"] == 0


def test_generative_examples_use_target_strings_and_lists_and_defaults():
  kind, records = bigbench.parse_task(GEN_TASK)
  assert kind == sources.GENERATIVE
  assert records[0] == {"inputs": "Q: say red\nA:", "targets": "red", "answers": ["red"]}
  assert records[-1]["targets"] == "grey" and records[-1]["answers"] == ["grey", "gray"]


def test_subtask_choices_not_appended_when_disabled():
  _, records = bigbench.parse_task(SUBTASK)
  assert records[0]["inputs"] == "Q: 0+1?\nA:" and records[0]["choices"] == ["1", "2"]


def test_mixed_tasks_become_generative():
  task = {"examples": [MC_TASK["examples"][0], GEN_TASK["examples"][0]]}
  kind, records = bigbench.parse_task(task)
  assert kind == sources.GENERATIVE
  assert records[0]["targets"] == "yes" and "choices" not in records[0]


def test_example_splits_are_deterministic_and_disjoint():
  _, records = bigbench.parse_task(MC_TASK)
  a = splits.split_examples("bigbench_toy_mc", records)
  assert a == splits.split_examples("bigbench_toy_mc", list(records))
  assert {k: len(v) for k, v in a.items()} == {"train": 14, "validation": 2, "test": 4}
  inputs = {k: {r["inputs"] for r in v} for k, v in a.items()}
  assert not (inputs["train"] & inputs["test"]) and not (inputs["train"] & inputs["validation"])
  assert splits.split_examples("other_name", records) != a  # the order depends on the task


@pytest.fixture
def bigbench_cache(tmp_path):
  cache = bb_prepare.prepare(str(tmp_path / "bb"), download=fake_bigbench_download)
  yield cache
  registry.remove_family(bigbench.FAMILY)


def test_prepare_extracts_tasks_and_subtasks_atomically(bigbench_cache, tmp_path):
  index = json.load(open(os.path.join(bigbench_cache, "index.json")))
  assert [(t["name"], t["kind"], t["n_examples"]) for t in index["tasks"]] == [
      ("toy_gen", "generative", 9), ("toy_mc", "multiple_choice", 20),
      ("toy_parent.easy", "multiple_choice", 6)]
  assert os.path.isfile(os.path.join(bigbench_cache, "tasks", "toy_parent", "easy", "task.json"))
  assert sorted(os.listdir(tmp_path)) == ["bb"]  # no temporary directories left behind

  def failing_download(dest):
    raise RuntimeError("network down")

  with pytest.raises(RuntimeError, match="network down"):
    bb_prepare.prepare(bigbench_cache, download=failing_download)
  assert os.path.isfile(os.path.join(bigbench_cache, "index.json"))  # old cache intact
  assert sorted(os.listdir(tmp_path)) == ["bb"]


def test_prepare_reads_wheels_too(tmp_path):
  cache = bb_prepare.prepare(
      str(tmp_path / "bbw"),
      download=lambda d: write_bigbench_sdist(os.path.join(d, "bigbench-1.0.0-py3-none-any.whl"),
                                              "zip"))
  assert len(json.load(open(os.path.join(cache, "index.json")))["tasks"]) == 3


def test_pip_download_command_is_the_only_download(monkeypatch, tmp_path):
  calls = []

  def fake_run(cmd, **kwargs):
    calls.append(cmd)
    write_bigbench_sdist(os.path.join(tmp_path, "bigbench-1.0.0.tar.gz"))
    return type("R", (), {"returncode": 0, "stderr": ""})()

  monkeypatch.setattr(bb_prepare.subprocess, "run", fake_run)
  path = bb_prepare.pip_download(str(tmp_path))
  assert path.endswith("bigbench-1.0.0.tar.gz")
  assert calls[0][1:] == ["-m", "pip", "download", "--no-deps", "bigbench==1.0.0", "-d",
                          str(tmp_path)]


def test_register_from_cache(bigbench_cache):
  assert bigbench.available(bigbench_cache)
  fam = bigbench.register_bigbench(cache_dir=bigbench_cache, heldout_fraction=0.5)
  names = sorted(fam.train_tasks + fam.heldout_tasks)
  assert names == ["bigbench_toy_gen", "bigbench_toy_mc", "bigbench_toy_parent.easy"]
  for name in names:  # the documented hash rule decides, on the parent task's name
    base = name[len("bigbench_"):].split(".")[0]
    assert (name in fam.heldout_tasks) == splits.is_heldout(base, 0.5)
  table = tasks.task_id_table("bigbench")
  assert [table[n] for n in fam.train_tasks + fam.heldout_tasks] == list(range(3))
  mc = tasks.eval_examples("bigbench_toy_mc", "test")
  assert len(mc) == 4 and all(len(ex["choices"]) == 2 for ex in mc)
  assert all(ex["targets"] == [ex["choices"][ex["label"]]] for ex in mc)
  gen = tasks.eval_examples("bigbench_toy_gen", "train") + tasks.eval_examples(
      "bigbench_toy_gen", "test") + tasks.eval_examples("bigbench_toy_gen", "validation")
  assert sorted(ex["inputs"] for ex in gen) == sorted(
      r["inputs"] for r in bigbench.parse_task(GEN_TASK)[1])
  assert any(ex["targets"] == ["grey", "gray"] for ex in gen)
  assert tasks.metric_names("bigbench_toy_mc") == ("accuracy",)
  assert tasks.metric_names("bigbench_toy_gen") == ("exact_match", "rouge_l")


def test_missing_cache_explains_how_to_prepare(tmp_path):
  assert not bigbench.available(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="python -m tasks.bigbench prepare"):
    bigbench.register_bigbench(cache_dir=str(tmp_path))
