"""k-shot subsets: seeded, disjoint from evaluation, optionally class balanced."""

import collections

import pytest

import tasks
from tasks import fewshot, registry


@pytest.fixture(scope="module")
def heldout():
  return tasks.heldout_tasks("synthetic")[0]


def _train_inputs(name):
  return [r["inputs"] for r in registry.formatted_records(name, "train")]


def test_same_seed_same_subset_other_seeds_differ(heldout):
  a = _train_inputs(tasks.fewshot_task(heldout, 16, 0))
  assert len(a) == 16 == len(set(a))
  registry.clear_record_cache()  # recompute from scratch
  assert _train_inputs(tasks.fewshot_task(heldout, 16, 0)) == a
  c = _train_inputs(tasks.fewshot_task(heldout, 16, 1))
  d = _train_inputs(tasks.fewshot_task(heldout, 16, 2))
  assert set(a) != set(c) and set(c) != set(d) and set(a) != set(d)


def test_fewshot_examples_come_from_train_and_never_from_evaluation(heldout):
  parent_train = set(_train_inputs(heldout))
  evaluation = {ex["inputs"] for split in ("validation", "test")
                for ex in tasks.eval_examples(heldout, split)}
  for seed in range(3):
    name = tasks.fewshot_task(heldout, 32, seed)
    shots = set(_train_inputs(name))
    assert len(shots) == 32
    assert shots <= parent_train
    assert not shots & evaluation
    # Evaluation splits of the few-shot task are the parent's.
    assert [e["inputs"] for e in tasks.eval_examples(name, "test")] == \
        [e["inputs"] for e in tasks.eval_examples(heldout, "test")]


def test_fewshot_tasks_carry_task_id_zero(heldout):
  name = tasks.fewshot_task(heldout, 16, 0)
  assert tasks.task_id_table(name) == {name: 0}
  batch = next(tasks.get_batches(name, "train", batch_size=8, num_epochs=1))
  assert batch["task_ids"].tolist() == [0] * 8


def test_balanced_selection_spreads_labels():
  records = [{"inputs": str(i), "label": 0 if i < 90 else 1 + (i % 2)} for i in range(100)]
  picked = fewshot.select_fewshot(records, 9, seed=0, task="t", balanced=True)
  counts = collections.Counter(records[i]["label"] for i in picked)
  assert counts == {0: 3, 1: 3, 2: 3}
  # Unbalanced draws follow the (skewed) label distribution instead.
  unbalanced = [collections.Counter(records[i]["label"] for i in
                                    fewshot.select_fewshot(records, 9, seed=s, task="t"))[0]
                for s in range(10)]
  assert sum(unbalanced) / 10 > 6
  assert picked == fewshot.select_fewshot(records, 9, seed=0, task="t", balanced=True)
  assert picked != fewshot.select_fewshot(records, 9, seed=1, task="t", balanced=True)


def test_k_larger_than_the_training_split_is_an_error():
  with pytest.raises(ValueError, match="k=11 .* 10 training"):
    fewshot.select_fewshot([{"inputs": str(i)} for i in range(10)], 11, 0)
