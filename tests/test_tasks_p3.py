"""P3 (T0's training mixture) from a local copy: which directories, tasks, text, rates."""

from __future__ import annotations

import pytest
import seqio

import tasks
from tasks import p3, registry
from tests.task_fixtures import P3_DIRS, p3_text, write_p3_dir

VOCAB = seqio.ByteVocabulary()


@pytest.fixture
def p3_dir(tmp_path):
  root = write_p3_dir(str(tmp_path / "P3"))
  yield root
  registry.remove_family(p3.FAMILY)


def _decode(tokens):
  ids = [int(t) for t in tokens]
  return VOCAB.decode(ids[:ids.index(1)] if 1 in ids else ids)


def test_directories_map_to_t0_training_datasets():
  assert p3.dataset_of("adversarial_qa_dbert_answer_the_following_q") == "adversarial_qa_dbert"
  assert p3.dataset_of("duorc_SelfRC_title_generation") == "duorc_SelfRC"
  assert p3.dataset_of("ag_news_classify_score_eval") is None
  assert p3.dataset_of("super_glue_rte_GPT_3_style") is None  # held out in T0
  assert p3.dataset_of("openbookqa_main_choose_an_answer") is None  # T0+ only
  assert len(p3.T0_TRAIN_DATASETS) == 38


def test_dataset_tasks_read_every_prompt_and_the_mixture_counts_examples(p3_dir):
  fam = p3.register_p3(p3_dir, granularity="dataset")
  assert fam.train_tasks == ["p3_adversarial_qa_dbert", "p3_adversarial_qa_dbidaf",
                             "p3_ag_news", "p3_dream"]
  assert tasks.task_id_table(p3.TRAIN_MIXTURE) == {n: i for i, n in enumerate(fam.train_tasks)}
  # Both ag_news prompts feed p3_ag_news; its validation split has only the one that has it.
  got = sorted(ex["inputs"] for ex in tasks.eval_examples("p3_ag_news", "train"))
  want = sorted(p3_text(d, "train", i)[0].strip() for d in ("ag_news_classify",
                                                            "ag_news_which_section")
                for i in range(P3_DIRS[d][0]))
  assert got == want
  ex = tasks.eval_examples("p3_ag_news", "validation")[0]
  assert ex["targets"] == ["answer 0"] and ex["inputs"].startswith("ag_news_classify validation")
  # Rates: stats.train.json where present (6 + 5 + 7), counted records elsewhere (4, 3).
  mixture = seqio.get_mixture_or_task(p3.TRAIN_MIXTURE)
  rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
  assert rates == {"p3_adversarial_qa_dbert": 5.0, "p3_adversarial_qa_dbidaf": 3.0,
                   "p3_ag_news": 10.0, "p3_dream": 7.0}
  batch = next(tasks.get_batches(p3.TRAIN_MIXTURE, "train", {"inputs": 96, "targets": 12},
                                 batch_size=8, seed=0))
  names = {i: n for n, i in tasks.task_id_table(p3.TRAIN_MIXTURE).items()}
  for row, task_id in zip(batch["encoder_input_tokens"], batch["task_ids"]):
    text = _decode(row)
    unit = names[int(task_id)][len("p3_"):]
    assert text.startswith(unit) and "question" in text  # each row keeps its own task id


def test_prompt_granularity_is_the_default_and_caps_each_dataset(p3_dir):
  fam = p3.register_p3(p3_dir, cap=4)
  assert fam.train_tasks == ["p3_" + d for d in sorted(P3_DIRS) if p3.dataset_of(d)]
  mixture = seqio.get_mixture_or_task(p3.TRAIN_MIXTURE)
  # As mttl: each of a dataset's T prompts is capped at cap // T (ag_news: 2 prompts
  # of 6 and 4 examples -> 2 each); single-prompt datasets at cap (5, 3, 7 -> 4, 3, 4).
  assert {t.name: mixture.get_rate(t) for t in mixture.tasks} == {
      "p3_adversarial_qa_dbert_answer_the_following_q": 4.0,
      "p3_adversarial_qa_dbidaf_answer_the_following_q": 3.0,
      "p3_ag_news_classify": 2.0, "p3_ag_news_which_section": 2.0,
      "p3_dream_answer_to_dialogue": 4.0}


def test_errors_name_the_bad_value(tmp_path):
  with pytest.raises(ValueError, match=r"granularity='task'.*\['prompt', 'dataset'\]"):
    p3.register_p3(str(tmp_path), granularity="task")
  with pytest.raises(FileNotFoundError, match="no P3 training data.*MHR_JAX_P3_DIR"):
    p3.register_p3(str(tmp_path / "missing"))
  assert not p3.available(str(tmp_path / "missing"))
