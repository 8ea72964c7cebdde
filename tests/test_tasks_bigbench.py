"""BIG-bench: prompts, shuffle, ties and duplicates as BIG-bench makes them; prepare; register.

The expected prompts below were produced by bigbench==1.0.0's own
`bigbench.api.json_task.default_format_fn` (random_seed=42, JsonTask's default) on
these fixture examples, with JsonTask's de-duplication and task_prefix; they are
pinned here as literals because the bigbench package is not installable.
Never downloads: `prepare` reads a local file:// package index or a fake sdist.
"""

import json
import logging
import os

import numpy as np
import pytest

import tasks
from tasks import metrics
from tasks import bigbench, registry, sources, splits
from tasks.bigbench import __main__ as bb_cli
from tasks.bigbench import fetch as bb_prepare
from tasks.bigbench import store
from tests.task_fixtures import (BB_GEN_TASK, BB_MC_TASK, BB_SHUFFLE_TASK, BB_SUBTASK,
                                 fake_bigbench_download, write_bigbench_sdist)

MC_TASK, GEN_TASK, SUBTASK = BB_MC_TASK, BB_GEN_TASK, BB_SUBTASK

# BIG-bench's (task_prefix + formatted input, choice, target) for BB_SHUFFLE_TASK.
BIGBENCH_SHUFFLE = [
    ("Answer briefly.\n\nQ: Which colour is the sky?\n  choice: green\n  choice: yellow\n"
     "  choice: blue\n  choice: red\nA: ", ["blue", "red", "green", "yellow"], "blue"),
    ("Answer briefly.\n\nQ: How many sides has a triangle?\n  choice: 4\n  choice: three\n"
     "  choice: 5\n  choice: 3\n  choice: four\nA: ", ["3", "three", "4", "four", "5"], "3"),
    ("Answer briefly.\n\nQ: Which colour is the sky?\n  choice: green\n  choice: yellow\n"
     "  choice: blue\n  choice: red\nA: ", ["red", "yellow", "green", "blue"], "blue"),
    ("Answer briefly.\n\nQ: Pick a vowel.\n  choice: a\n  choice: b\n  choice: e\nA: ",
     ["b", "a", "e"], "a"),
]


def test_prompts_shuffle_and_dedup_equal_bigbench():
  kind, records, counts = bigbench.parse_examples(BB_SHUFFLE_TASK)
  assert kind == sources.MULTIPLE_CHOICE
  assert counts == {"examples": 5, "duplicates": 1, "skipped": 0}  # example 2 repeats 0
  examples = [BB_SHUFFLE_TASK["examples"][i] for i in (0, 1, 3, 4)]
  assert [bigbench.bigbench_prompt(BB_SHUFFLE_TASK, ex) for ex in examples] == [
      p for p, _, _ in BIGBENCH_SHUFFLE]
  for r, (prompt, choice, target) in zip(records, BIGBENCH_SHUFFLE):
    assert r["inputs"] == prompt.strip()  # the documented difference: surrounding whitespace
    assert r["choices"] == choice and r["targets"] == target
    assert r["choices"][r["label"]] == target
  # Ties and fractional scores are kept for grading, in choice order.
  assert records[1]["choice_scores"] == [1.0, 1.0, 0.0, 0.0, 0.0]
  assert records[3]["choice_scores"] == [0.0, 0.5, 0.5]


def test_multiple_choice_grade_credits_ties_like_bigbench():
  _, records, _ = bigbench.parse_examples(BB_SHUFFLE_TASK)
  credit = [r["choice_scores"] for r in records]
  # Model log-likelihoods (choice order): predicts blue, "three" (tied with "3"), red, "e".
  scores = [[0.0, -1, -2, -3], [-1.0, 0.0, -2, -3, -4], [0.0, -1, -2, -3], [-2.0, -1, 0]]
  # multiple_choice_grade = mean of target_scores[predicted choice] = (1 + 1 + 0 + 0.5) / 4
  assert metrics.multiple_choice_grade(scores, credit) == pytest.approx(62.5)
  assert metrics.rank_classification_accuracy(scores, [r["label"] for r in records]) == 25.0


def test_multiple_choice_examples_use_target_scores_and_prefixes():
  kind, records = bigbench.parse_task(MC_TASK)
  assert kind == sources.MULTIPLE_CHOICE and len(records) == 20
  r = records[3]
  assert r["choices"] == ["yes", "no"] and r["label"] == 1 and r["targets"] == "no"
  # BIG-bench's string for this example (default_format_fn, seed 42).
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


def test_mixed_tasks_and_generative_metrics_become_generative():
  task = {"examples": [MC_TASK["examples"][0], GEN_TASK["examples"][0]]}
  kind, records = bigbench.parse_task(task)
  assert kind == sources.GENERATIVE
  assert records[0]["targets"] == "yes" and "choices" not in records[0]
  kind, _ = bigbench.parse_task({**BB_SHUFFLE_TASK, "metrics": ["exact_str_match"]})
  assert kind == sources.GENERATIVE  # BIG-bench would not score it as multiple choice


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


def _write_file_index(root, sdist):
  """A PEP 503 package index on disk (what `pip --index-url file://...` reads)."""
  page = root / "bigbench"
  page.mkdir(parents=True)
  sha = bb_prepare.sha256_of(sdist)
  (page / "index.html").write_text(
      f'<html><body><a href="../../{os.path.basename(sdist)}#sha256={sha}">'
      f"{os.path.basename(sdist)}</a></body></html>")
  return "file://" + str(root)


def test_prepare_command_downloads_from_an_index_and_checks_the_hash(tmp_path, capsys):
  sdist = write_bigbench_sdist(str(tmp_path / bb_prepare.SDIST))
  index_url = _write_file_index(tmp_path / "simple", sdist)
  cache = tmp_path / "bb"
  assert bb_cli.main(["prepare", "--cache_dir", str(cache), "--index_url", index_url]) == 0
  assert "4 JSON tasks and subtasks (39 examples after dropping 1 duplicates)" in (
      capsys.readouterr().out)
  assert os.path.isfile(cache / "records" / "toy_shuffle.jsonl")
  with open(sdist, "ab") as f:  # the file no longer matches the index's sha256
    f.write(b"x")
  with pytest.raises(RuntimeError, match="sha256"):
    bb_cli.main(["prepare", "--cache_dir", str(cache), "--index_url", index_url])
  assert os.path.isfile(cache / "index.json")  # the earlier cache is intact
  # PyPI's JSON simple API (PEP 691) lists the same file.
  page = {"files": [{"filename": bb_prepare.SDIST, "url": "/packages/x/" + bb_prepare.SDIST,
                     "hashes": {"sha256": "ab" * 32}}]}
  assert bb_prepare.parse_project_page(json.dumps(page), "https://pypi.org/simple/bigbench/") == {
      bb_prepare.SDIST: ("https://pypi.org/packages/x/" + bb_prepare.SDIST, "ab" * 32)}


def test_prepare_takes_a_downloaded_archive(tmp_path):
  archive = write_bigbench_sdist(str(tmp_path / "bigbench-1.0.0-py3-none-any.whl"), "zip")
  cache = tmp_path / "bbw"
  assert bb_cli.main(["prepare", "--cache_dir", str(cache), "--archive", archive]) == 0
  assert len(store.read_index(str(cache))["tasks"]) == 4
  assert sorted(os.listdir(tmp_path)) == ["bbw", "bigbench-1.0.0-py3-none-any.whl"]


def test_prepare_extracts_parses_and_is_atomic(bigbench_cache, tmp_path):
  index = store.read_index(bigbench_cache)
  assert [(t["name"], t["kind"], t["n_examples"], t["duplicates"]) for t in index["tasks"]] == [
      ("toy_gen", "generative", 9, 0), ("toy_mc", "multiple_choice", 20, 0),
      ("toy_parent.easy", "multiple_choice", 6, 0), ("toy_shuffle", "multiple_choice", 4, 1)]
  assert index["store_version"] == store.STORE_VERSION
  assert sorted(os.listdir(tmp_path)) == ["bb"]  # no temporary directories left behind
  entry = index["tasks"][1]
  assert entry["splits"] == {"train": 14, "validation": 2, "test": 4}
  assert store.read_split(bigbench_cache, entry, "test") == splits.split_examples(
      "bigbench_toy_mc", bigbench.parse_task(MC_TASK)[1])["test"]

  def failing_download(dest):
    raise RuntimeError("network down")

  with pytest.raises(RuntimeError, match="network down"):
    bb_prepare.prepare(bigbench_cache, download=failing_download)
  assert os.path.isfile(os.path.join(bigbench_cache, "index.json"))  # old cache intact
  assert sorted(os.listdir(tmp_path)) == ["bb"]


def test_old_cache_is_parsed_once_into_the_store(bigbench_cache):
  path = os.path.join(bigbench_cache, "index.json")
  index = json.load(open(path))
  json.dump({"source": index["source"], "tasks": [{k: t[k] for k in ("name", "path", "kind")}
                                                  for t in index["tasks"]]}, open(path, "w"))
  assert store.ensure_store(bigbench_cache) == index
  assert json.load(open(path)) == index


def test_register_from_cache(bigbench_cache):
  assert bigbench.available(bigbench_cache)
  fam = bigbench.register_bigbench(cache_dir=bigbench_cache, heldout_fraction=0.5)
  names = sorted(fam.train_tasks + fam.heldout_tasks)
  assert names == ["bigbench_toy_gen", "bigbench_toy_mc", "bigbench_toy_parent.easy",
                   "bigbench_toy_shuffle"]
  for name in names:  # the documented hash rule decides, on the parent task's name
    base = name[len("bigbench_"):].split(".")[0]
    assert (name in fam.heldout_tasks) == splits.is_heldout(base, 0.5)
  table = tasks.task_id_table("bigbench")
  assert [table[n] for n in fam.train_tasks + fam.heldout_tasks] == list(range(4))
  mc = tasks.eval_examples("bigbench_toy_mc", "test")
  assert len(mc) == 4 and all(len(ex["choices"]) == 2 for ex in mc)
  assert all(ex["targets"] == [ex["choices"][ex["label"]]] for ex in mc)
  assert all(ex["choice_scores"][ex["label"]] == 1.0 for ex in mc)
  gen = tasks.eval_examples("bigbench_toy_gen", "train") + tasks.eval_examples(
      "bigbench_toy_gen", "test") + tasks.eval_examples("bigbench_toy_gen", "validation")
  assert sorted(ex["inputs"] for ex in gen) == sorted(
      r["inputs"] for r in bigbench.parse_task(GEN_TASK)[1])
  assert any(ex["targets"] == ["grey", "gray"] for ex in gen)
  assert tasks.metric_names("bigbench_toy_mc") == ("accuracy",)
  assert tasks.metric_names("bigbench_toy_gen") == ("exact_match", "rouge_l")


def test_training_mixture_is_one_pipeline_with_right_ids_and_truncation_report(
    bigbench_cache, caplog):
  fam = bigbench.register_bigbench(cache_dir=bigbench_cache, heldout_fraction=0.0)
  vocab = registry.vocabulary_of(fam.train_mixture)
  by_input = {}
  for name in fam.train_tasks:
    for r in tasks.eval_examples(name, "train"):
      by_input[r["inputs"]] = r["task_id"]
  lengths = {"inputs": 24, "targets": 8}
  with caplog.at_level(logging.INFO, logger="tasks.bigbench.mixture"):
    batches = tasks.get_batches(fam.train_mixture, "train", lengths, batch_size=16, seed=3)
    first = [next(batches) for _ in range(4)]
  # Only training examples, each with its own task's id; every task gets drawn.
  seen = set()
  for batch in first:
    for tokens, tid in zip(batch["encoder_input_tokens"], batch["task_ids"]):
      text = vocab.decode(tokens.tolist())
      matches = {t for i, t in by_input.items() if i.startswith(text)}
      assert matches == {int(tid)}, text
      seen.add(int(tid))
  assert seen == set(range(len(fam.train_tasks)))
  again = next(tasks.get_batches(fam.train_mixture, "train", lengths, batch_size=16, seed=3))
  assert all(np.array_equal(again[k], first[0][k]) for k in again)  # deterministic by seed
  # The report: the fraction of each task's training inputs over 23 bytes (+ EOS = 24).
  report = {r["task"]: r for r in registry.provider(fam.train_mixture).last_truncation_report}
  for name in fam.train_tasks:
    cut = np.mean([len(r["inputs"].encode()) > 23 for r in tasks.eval_examples(name, "train")])
    assert report[name]["inputs"] == pytest.approx(cut)
  assert report["bigbench_toy_mc"]["inputs"] == 1.0 and report["bigbench_toy_gen"]["targets"] == 0
  assert any(r.levelno == logging.WARNING and "bigbench_toy_mc (100% / 0%)" in r.getMessage()
             for r in caplog.records)


def test_missing_cache_explains_how_to_prepare(tmp_path):
  assert not bigbench.available(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="python -m tasks.bigbench prepare"):
    bigbench.register_bigbench(cache_dir=str(tmp_path))
