"""Batches through the feature converter: content, task ids, determinism, vocabulary, ids I/O."""

import importlib
import os

import numpy as np
import pytest
import seqio

import tasks
from tasks import registry, synthetic
from tasks.batches import MODEL_KEYS
from tasks.task_ids import make_table

VOCAB = seqio.ByteVocabulary()
SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                   "sentencepiece.model")


def _text(tokens):
  ids = [int(t) for t in tokens]
  return VOCAB.decode(ids[:ids.index(1)] if 1 in ids else ids)


def test_mixture_batches_match_their_task_ids():
  lengths = {"inputs": 12, "targets": 20}
  batch = next(tasks.get_batches("synthetic_train", "train", lengths, batch_size=64, seed=3))
  assert set(batch) == set(MODEL_KEYS)
  assert batch["encoder_input_tokens"].shape == (64, 12)
  assert batch["decoder_target_tokens"].shape == (64, 20)
  assert batch["task_ids"].shape == (64,) and batch["task_ids"].dtype == np.int32
  assert len(set(batch["task_ids"].tolist())) > 5
  names = {i: n for n, i in tasks.task_id_table("synthetic_train").items()}
  train, _ = synthetic.compositions(synthetic.SyntheticSpec())
  comp_of = {synthetic.task_name(c): c for c in train}
  for i in range(64):
    comp = comp_of[names[int(batch["task_ids"][i])]]
    source = _text(batch["encoder_input_tokens"][i])
    # The target is the example's own task applied to its input: task ids were not shuffled
    # away from their examples.
    assert _text(batch["decoder_target_tokens"][i]) == synthetic.apply_skills(comp, source)
  tgt = batch["decoder_target_tokens"]
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 0], 0)
  np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], tgt[:, :-1])
  np.testing.assert_array_equal(batch["decoder_loss_weights"], (tgt > 0).astype(np.int32))
  assert all(1 in row for row in batch["encoder_input_tokens"].tolist())  # EOS kept


def test_single_task_batches_carry_that_tasks_id_and_override():
  name = tasks.heldout_tasks("synthetic")[2]
  table = tasks.task_id_table("synthetic")
  batch = next(tasks.get_batches(name, "test", batch_size=16, shuffle=False, num_epochs=1))
  assert batch["task_ids"].tolist() == [table[name]] * 16
  expected = [ex["inputs"] for ex in tasks.eval_examples(name, "test", 16)]
  assert [_text(t) for t in batch["encoder_input_tokens"]] == expected
  batch = next(tasks.get_batches(name, "test", batch_size=4, task_id=0, num_epochs=1))
  assert batch["task_ids"].tolist() == [0] * 4


@pytest.fixture
def small_mixture():
  name = "test_tasks_small_mixture"
  tasks.register_mixture(name, "synthetic", tasks.train_tasks("synthetic")[:3])
  yield name
  registry.remove_mixture(name)


def test_same_seed_same_batches_other_seed_differs(small_mixture):
  def first(seed):
    return next(tasks.get_batches(small_mixture, "train", batch_size=16, seed=seed))
  a, b, c = first(7), first(7), first(8)
  for k in MODEL_KEYS:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["encoder_input_tokens"], c["encoder_input_tokens"])


def test_one_epoch_covers_the_split_once():
  name = tasks.heldout_tasks("synthetic")[0]
  rows = [r for b in tasks.get_batches(name, "validation", batch_size=7, num_epochs=1,
                                       drop_remainder=False) for r in b["encoder_input_tokens"]]
  assert sorted(_text(r) for r in rows) == sorted(
      ex["inputs"] for ex in tasks.eval_examples(name, "validation"))


def test_vocabulary_switch_retokenizes_every_task():
  spm = seqio.SentencePieceVocabulary(SPM)
  name = tasks.train_tasks("synthetic")[0]
  try:
    batch = next(tasks.get_batches(name, "test", {"inputs": 32, "targets": 32}, batch_size=2,
                                   shuffle=False, num_epochs=1, vocabulary=spm))
    assert registry.vocabulary_of("synthetic_train") == spm
    first = tasks.eval_examples(name, "test", 1)[0]
    expected = list(spm.encode(first["inputs"])) + [1]
    assert batch["encoder_input_tokens"][0].tolist()[:len(expected) + 1] == expected + [0]
  finally:
    tasks.set_vocabulary(seqio.ByteVocabulary())
  assert registry.vocabulary_of(name) == seqio.ByteVocabulary()


def test_task_id_tables():
  table = tasks.task_id_table("synthetic_train")
  assert sorted(table.values()) == list(range(24))
  with pytest.raises(ValueError, match=r"duplicate task names in a task-id table: \['a'\]"):
    make_table(["a", "b", "a"])


def test_rank_classification_pairs():
  ex = {"inputs": "Q?", "choices": ["yes", "no", "maybe"], "label": 1}
  assert tasks.rank_classification_pairs(ex) == [("Q?", "yes"), ("Q?", "no"), ("Q?", "maybe")]
  with pytest.raises(ValueError, match="choices"):
    tasks.rank_classification_pairs({"inputs": "x", "targets": ["y"]})


def test_reimport_and_reregistration_are_idempotent():
  before = sorted(seqio.TaskRegistry.names())
  tasks.register_defaults()
  importlib.reload(tasks)
  assert sorted(seqio.TaskRegistry.names()) == before
  assert "synthetic_train" in tasks.list_tasks()
  # A task removed from seqio's own registry is rebuilt on the next look-up.
  name = tasks.train_tasks("synthetic")[0]
  seqio.TaskRegistry.remove(name)
  assert registry.provider(name).name == name and name in seqio.TaskRegistry.names()
