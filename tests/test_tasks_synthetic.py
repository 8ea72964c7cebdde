"""Synthetic compositional skills: skill semantics, the train/held-out split, determinism."""

import dataclasses
import itertools

import pytest

import tasks
from tasks import registry, synthetic
from tasks.synthetic import SyntheticSpec, apply_skills, compositions, task_examples

SMALL = SyntheticSpec(n_train_examples=50, n_validation_examples=10, n_test_examples=20,
                      fewshot_ks=(), fewshot_seeds=())


@pytest.mark.parametrize("skill,text,expected", [
    ("up_abc", "cabbie", "CABBie"),
    ("up_def", "deaf", "DEaF"),
    ("up_vwx", "waxy", "WaXy"),
    ("up_stu", "yz", "yz"),  # y and z belong to no skill
])
def test_each_skill_uppercases_its_group(skill, text, expected):
  assert apply_skills((skill,), text) == expected


def test_skills_partition_a_to_x_and_compose_as_a_union():
  letters = [c for g in synthetic.GROUPS for c in g]
  assert "".join(sorted(letters)) == "abcdefghijklmnopqrstuvwx" and len(synthetic.SKILLS) == 8
  text = "abcdefghijklmnopqrstuvwxyz"
  assert apply_skills(("up_abc", "up_vwx"), text) == "ABCdefghijklmnopqrstuVWXyz"
  assert apply_skills(("up_vwx", "up_abc"), text) == apply_skills(("up_abc", "up_vwx"), text)


def test_skill_matrix_is_the_ground_truth_of_each_task():
  spec = SyntheticSpec()
  truth, names, skills = synthetic.skill_matrix(spec)
  assert truth.shape == (32, 8) and (truth.sum(1) == 3).all()
  assert names == tasks.train_tasks("synthetic") + tasks.heldout_tasks("synthetic")
  for row, name in zip(truth, names):
    assert name == synthetic.task_name(tuple(s for s, on in zip(skills, row) if on))


def test_registered_targets_are_the_composition_applied_to_the_input():
  spec = SyntheticSpec()
  train, heldout = compositions(spec)
  for comp in (train[0], heldout[0]):
    name = synthetic.task_name(comp)
    for ex in tasks.eval_examples(name, "test", max_examples=50):
      assert ex["targets"] == [apply_skills(comp, ex["inputs"])]
      assert ex["inputs"].isalpha() and ex["inputs"].islower()
      assert len(set(ex["inputs"])) == len(ex["inputs"])  # distinct letters
      assert list(ex["inputs"]) == sorted(ex["inputs"]) or not spec.sorted_letters


def test_heldout_skills_seen_in_training_but_never_the_same_combination():
  train, heldout = compositions(SyntheticSpec())
  assert len(train) == 24 and len(heldout) == 8
  train_sets = {frozenset(c) for c in train}
  train_skills = set(itertools.chain.from_iterable(train))
  for comp in heldout:
    assert set(comp) <= train_skills
    assert frozenset(comp) not in train_sets
    assert comp not in train


def test_no_two_tasks_compute_the_same_function():
  train, heldout = compositions(SyntheticSpec())
  functions = [apply_skills(c, "abcdefghijklmnopqrstuvwxyz") for c in train + heldout]
  assert len(set(functions)) == len(functions)


def test_same_seed_same_tasks_and_examples_other_seed_differs():
  assert compositions(SMALL) == compositions.__wrapped__(dataclasses.replace(SMALL))
  other = dataclasses.replace(SMALL, seed=1)
  assert compositions(other) != compositions(SMALL)
  comp = compositions(SMALL)[0][0]
  again = task_examples.__wrapped__(SMALL, comp)  # bypass the cache
  assert again == task_examples(SMALL, comp)
  assert task_examples(other, comp)["train"] != task_examples(SMALL, comp)["train"]


def test_splits_are_disjoint_sized_and_fit_the_sequence_lengths():
  comp = compositions(SMALL)[1][0]
  ex = task_examples(SMALL, comp)
  assert {k: len(v) for k, v in ex.items()} == {"train": 50, "validation": 10, "test": 20}
  inputs = {k: {x for x, _ in v} for k, v in ex.items()}
  assert not inputs["train"] & inputs["test"]
  assert not inputs["train"] & inputs["validation"]
  assert not inputs["validation"] & inputs["test"]
  lengths = SMALL.sequence_length()
  assert all(len(x) + 1 <= lengths["inputs"] and len(y) + 1 <= lengths["targets"]
             for v in ex.values() for x, y in v)


def test_task_id_table_training_first_then_heldout():
  fam = registry.family("synthetic")
  table = tasks.task_id_table("synthetic")
  assert [table[n] for n in fam.train_tasks] == list(range(24))
  assert [table[n] for n in fam.heldout_tasks] == list(range(24, 32))
  assert tasks.task_id_table("synthetic_train") == {n: i for i, n in enumerate(fam.train_tasks)}
  assert tasks.train_mixture("synthetic") == "synthetic_train"
  assert tasks.heldout_tasks("synthetic") == fam.heldout_tasks


def test_infeasible_spec_names_the_problem():
  with pytest.raises(ValueError, match="cannot draw"):
    compositions(SyntheticSpec(n_skills_pool=4, n_train_tasks=24, n_heldout_tasks=8))
