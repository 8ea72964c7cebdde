"""Super-NaturalInstructions on tiny task files in the clone's layout."""

import pytest

import tasks
from tasks import natural_instructions as ni
from tasks import registry
from tests.task_fixtures import write_ni_clone


@pytest.fixture(scope="module")
def ni_dir(tmp_path_factory):
  root = write_ni_clone(str(tmp_path_factory.mktemp("natural-instructions")))
  fam = ni.register_natural_instructions(root, num_positive=2)
  yield root, fam
  registry.remove_family(ni.FAMILY)


def test_prompt_is_definition_demonstrations_and_input(ni_dir):
  ex = tasks.eval_examples("ni_task001_alpha", "test")[0]
  instance = ex["inputs"].split("Input: ")[-1].split("\n")[0]
  assert ex["inputs"] == (
      "Definition: Do the alpha thing.\n\n"
      "Positive Example 1 -\nInput: x1\nOutput: y1.\n\n"
      "Positive Example 2 -\nInput: x2\nOutput: y2.\n\n"
      f"Now complete the following example -\nInput: {instance}\nOutput:")
  assert ex["targets"] == [f"out{instance.split()[-1]}"]
  assert "x3" not in ex["inputs"] and "bad" not in ex["inputs"]


def test_all_outputs_count_and_first_is_the_training_target(ni_dir):
  ex = tasks.eval_examples("ni_task003_gamma", "test")[0]
  i = ex["inputs"].split("gamma input ")[-1].split("\n")[0]
  assert ex["targets"] == [f"g{i}", f"G{i}"]
  train = registry.formatted_records("ni_task003_gamma", "train")[0]
  assert train["targets"] == train["answers"][0]


def test_train_and_test_tasks_ids_and_mixture(ni_dir):
  _, fam = ni_dir
  assert fam.train_tasks == ["ni_task001_alpha", "ni_task002_beta"]
  assert fam.heldout_tasks == ["ni_task003_gamma"]  # missing files are skipped
  assert tasks.task_id_table(ni.FAMILY) == {"ni_task001_alpha": 0, "ni_task002_beta": 1,
                                            "ni_task003_gamma": 2}
  assert tasks.train_mixture(ni.FAMILY) == "natural_instructions_train"
  assert tasks.metric_names("ni_task003_gamma") == ("exact_match", "rouge_l")


def test_instances_split_deterministically_without_overlap(ni_dir):
  by_split = {s: [e["inputs"] for e in tasks.eval_examples("ni_task001_alpha", s)]
              for s in ("train", "validation", "test")}
  assert [len(v) for v in by_split.values()] == [21, 3, 6]
  assert len(set(sum(by_split.values(), []))) == 30
  ni.load_splits.cache_clear()
  registry.clear_record_cache()
  assert [e["inputs"] for e in tasks.eval_examples("ni_task001_alpha", "test")] == by_split["test"]


def test_missing_clone_is_a_clear_error(tmp_path):
  assert not ni.available(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="MHR_JAX_NI_DIR"):
    ni.register_natural_instructions(str(tmp_path))
