"""Super-NaturalInstructions on tiny task files in the clone's layout, under the paper's protocol
(mttl at mhr-camera-ready; sizes shrunk: 8 instances per training task, the first 10 for test)."""

import pytest

import tasks
from tasks import fewshot, registry
from tasks import natural_instructions as ni
from tests.task_fixtures import ni_task, write_ni_clone

TRAIN_INSTANCES, TEST_INSTANCES = 8, 10


@pytest.fixture(scope="module")
def ni_dir(tmp_path_factory):
  root = write_ni_clone(str(tmp_path_factory.mktemp("natural-instructions")))
  ni.load_splits.cache_clear()
  fam = ni.register_natural_instructions(root, instances_per_train_task=TRAIN_INSTANCES,
                                         test_instances=TEST_INSTANCES)
  yield root, fam
  registry.remove_family(ni.FAMILY)
  ni.load_splits.cache_clear()


def test_prompt_is_mttl_definition_and_input_only(ni_dir):
  ex = tasks.eval_examples("ni_task003_gamma", "test")[0]
  assert ex["inputs"] == ("Task definition: Do the gamma thing.\n"
                          "Now complete the following example -\nInput: gamma input 0.\nOutput:")
  assert ex["targets"] == ["g0", "G0"]  # every output counts at evaluation
  # Demonstrations on request, in mttl's layout ('.' only where punctuation is missing).
  task = ni_task("d", 1)
  assert ni.format_prompt(task, "q?", num_positive=2) == (
      "Task definition: Do the d thing.\n Positive Example 1 -\nInput: x1.\n Output: y1.\n\n"
      " Positive Example 2 -\nInput: x2.\n Output: y2.\n\n"
      "Now complete the following example -\nInput: q?\nOutput:")


def test_test_split_is_the_first_instances_and_fewshot_draws_from_the_rest(ni_dir):
  test = [e["inputs"] for e in tasks.eval_examples("ni_task003_gamma", "test")]
  assert test == [ni.format_prompt({"Definition": ["Do the gamma thing."]}, f"gamma input {i}")
                  for i in range(TEST_INSTANCES)]
  pool = {e["inputs"] for e in tasks.eval_examples("ni_task003_gamma", "train")}
  assert len(pool) == 20 - TEST_INSTANCES and not pool & set(test)
  seen = []
  for seed in (13, 42, 58):
    name = fewshot.fewshot_task("ni_task003_gamma", 3, seed)
    train = [e["inputs"] for e in tasks.eval_examples(name, "train")]
    validation = [e["inputs"] for e in tasks.eval_examples(name, "validation")]
    assert len(train) == len(validation) == 3
    assert set(train) <= pool and set(validation) <= pool and not set(train) & set(validation)
    assert [e["inputs"] for e in tasks.eval_examples(name, "test")] == test
    seen.append(tuple(train))
  assert len(set(seen)) == 3  # seeds draw different instances


def test_training_tasks_keep_a_seeded_draw_of_instances(ni_dir):
  train = [r["inputs"] for r in registry.formatted_records("ni_task001_alpha", "train")]
  assert len(train) == TRAIN_INSTANCES and len(set(train)) == TRAIN_INSTANCES
  assert train != [ni.format_prompt({"Definition": ["Do the alpha thing."]}, f"alpha input {i}")
                   for i in range(TRAIN_INSTANCES)]  # a draw, not the first ones
  ni.load_splits.cache_clear()
  registry.clear_record_cache()
  assert [r["inputs"] for r in registry.formatted_records("ni_task001_alpha", "train")] == train
  beta = registry.formatted_records("ni_task002_beta", "train")
  assert len(beta) == TRAIN_INSTANCES and beta[0]["targets"] == beta[0]["answers"][0]


def test_train_and_test_tasks_ids_and_mixture(ni_dir):
  _, fam = ni_dir
  assert fam.train_tasks == ["ni_task001_alpha", "ni_task002_beta"]
  assert fam.heldout_tasks == ["ni_task003_gamma"]  # missing files are skipped
  assert tasks.task_id_table(ni.FAMILY) == {"ni_task001_alpha": 0, "ni_task002_beta": 1,
                                            "ni_task003_gamma": 2}
  assert tasks.train_mixture(ni.FAMILY) == "natural_instructions_train"
  assert tasks.metric_names("ni_task003_gamma") == ("exact_match", "rouge_l")


def test_missing_clone_is_a_clear_error(tmp_path):
  assert not ni.available(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="MHR_JAX_NI_DIR"):
    ni.register_natural_instructions(str(tmp_path))
