"""T0 held-out tasks: prompts, answer choices and labels on records in TFDS's feature format.

The records (tests/fixtures/t0_tfds_records.json) go through a FunctionDataSource
instead of TFDS, so no TFDS data is needed; everything after the source is
the registered task's own preprocessing.
"""


import numpy as np
import pytest
import seqio

import tasks
from tasks import registry, t0
from tests.task_fixtures import t0_fixture_source

@pytest.fixture(scope="module", autouse=True)
def t0_on_fixtures():
  t0.register_t0(source_fn=t0_fixture_source)
  yield
  t0.register_t0()


def test_default_registration_reads_the_right_tfds_datasets():
  names = {t.name: t.tfds_name for t in t0.T0_TASKS}
  assert names["t0_rte"] == "super_glue/rte:1.0.2"
  assert names["t0_wsc"] == "super_glue/wsc.fixed:1.0.2"
  assert names["t0_anli_r3"] == "anli/r3:0.1.0"
  assert names["t0_winogrande"].startswith("winogrande") and names["t0_story_cloze"].startswith(
      "story_cloze/2016")
  source = t0.tfds_source(t0.T0_TASKS[0])
  assert isinstance(source, seqio.TfdsDataSource)
  assert source.tfds_dataset.name == "super_glue/rte:1.0.2"
  assert tuple(source.splits) == ("train", "validation", "test")
  assert source.tfds_dataset._split_map == {  # pylint: disable=protected-access
      "train": "train", "validation": "validation", "test": "validation"}
  assert len(tasks.heldout_tasks("t0")) == 11


def test_nli_prompts_and_labels():
  rte = tasks.eval_examples("t0_rte", "test")
  assert len(rte) == 2  # the unlabelled (-1) example is dropped
  assert rte[0]["inputs"] == ("Dana Reeve died of lung cancer. Question: Dana Reeve had cancer. "
                              "True or False?")
  assert rte[0]["choices"] == ["True", "False"] and rte[0]["label"] == 0
  assert rte[1]["targets"] == ["False"]
  cb = tasks.eval_examples("t0_cb", "test")
  assert [ex["targets"][0] for ex in cb] == ["True", "False", "Neither"]
  assert cb[0]["inputs"].endswith("True, False, or Neither?")
  anli = tasks.eval_examples("t0_anli_r1", "test")
  assert [ex["targets"][0] for ex in anli] == ["True", "False", "Neither"]  # e, c, n
  assert anli[0]["choices"] == ["True", "Neither", "False"]


def test_copa_wic_wsc_prompts():
  copa = tasks.eval_examples("t0_copa", "test")
  assert copa[0]["inputs"] == "The man broke his toe because"
  assert copa[0]["choices"] == ["he dropped a hammer on his foot.", "he got a hole in his sock."]
  assert copa[1]["inputs"] == "I tipped the bottle so"
  assert copa[1]["targets"] == ["the liquid in the bottle poured out."]
  wic = tasks.eval_examples("t0_wic", "test")
  assert "'bank'" in wic[0]["inputs"] and wic[0]["targets"] == ["No"]
  assert wic[1]["targets"] == ["Yes"]
  wsc = tasks.eval_examples("t0_wsc", "test")[0]
  assert wsc["inputs"].endswith('does the pronoun "He" refer to Pete? Yes or no?')
  assert wsc["targets"] == ["Yes"]


def test_completion_tasks_use_their_endings_as_choices():
  hs = tasks.eval_examples("t0_hellaswag", "test")
  assert len(hs) == 1 and hs[0]["choices"][0] == "climbs up the ladder." and hs[0]["label"] == 0
  assert hs[0]["inputs"].startswith("Complete the description with an appropriate ending:\n")
  wg = tasks.eval_examples("t0_winogrande", "test")[0]
  assert wg["choices"] == ["trophy", "suitcase"] and wg["targets"] == ["trophy"]
  sc = tasks.eval_examples("t0_story_cloze", "test")
  assert len(sc) == 1  # unlabelled dropped
  assert sc[0]["label"] == 1 and sc[0]["targets"] == ["Tom found Rex in the park."]  # 1-based 2
  assert "- Tom never looked for Rex.\n- Tom found Rex in the park." in sc[0]["inputs"]


def test_task_ids_and_rank_classification_pairs():
  table = tasks.task_id_table("t0")
  assert list(table) == [t.name for t in t0.T0_TASKS] and table["t0_copa"] == 2
  ex = tasks.eval_examples("t0_copa", "test")[1]
  assert ex["task_id"] == 2
  pairs = tasks.rank_classification_pairs(ex)
  assert pairs == [(ex["inputs"], c) for c in ex["choices"]] and len(pairs) == 2


def test_tokenized_batches_target_the_correct_choice():
  vocab = seqio.ByteVocabulary()
  batch = next(tasks.get_batches("t0_cb", "test", {"inputs": 128, "targets": 16}, batch_size=3,
                                 shuffle=False, num_epochs=1))
  targets = [vocab.decode([t for t in row.tolist() if t > 1]) for row in
             batch["decoder_target_tokens"]]
  assert targets == ["True", "False", "Neither"]
  np.testing.assert_array_equal(batch["task_ids"], [1, 1, 1])


def test_balanced_fewshot_for_multiple_choice():
  name = tasks.fewshot_task("t0_cb", 3, seed=0)  # balanced by default for multiple choice
  labels = sorted(r["label"] for r in registry.formatted_records(name, "train"))
  assert labels == [0, 1, 2]
