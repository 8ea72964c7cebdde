"""Vocabularies: T5 special ids, checkpoint spiece.model, cached SentencePiece training."""

import os
import shutil

import pytest
import seqio

from tasks import vocab

SPM = os.path.join(os.path.dirname(seqio.__file__), "test_data", "sentencepiece",
                   "sentencepiece.model")


def test_byte_vocabulary_follows_t5_ids():
  v = vocab.get_vocabulary()
  assert isinstance(v, seqio.ByteVocabulary)
  assert v.pad_id == 0 and v.eos_id == 1
  assert v.encode("ab") == [ord("a") + 3, ord("b") + 3]


def test_checkpoint_dir_uses_its_spiece_model(tmp_path):
  shutil.copy(SPM, tmp_path / "spiece.model")
  (tmp_path / "tokenizer_config.json").write_text('{"extra_ids": 100}')
  v = vocab.get_vocabulary(str(tmp_path))
  assert isinstance(v, seqio.SentencePieceVocabulary)
  assert v.pad_id == 0 and v.eos_id == 1
  assert v.vocab_size == seqio.SentencePieceVocabulary(SPM).vocab_size + 100
  assert v.decode(v.encode("hello world")) == "hello world"


def test_missing_spiece_model_lists_the_directory(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match="config.json"):
    vocab.get_vocabulary(str(tmp_path))
  with pytest.raises(ValueError, match="valid kinds"):
    vocab.get_vocabulary(kind="bpe")
  with pytest.raises(ValueError, match="checkpoint_dir"):
    vocab.get_vocabulary(kind="checkpoint")


def test_trained_sentencepiece_is_cached_by_its_inputs(tmp_path):
  texts = [f"the {w} fox jumps over the lazy dog number {i}"
           for i, w in enumerate(["quick", "slow", "red", "brown", "sly"] * 20)]
  path = vocab.train_sentencepiece(texts, 64, str(tmp_path))
  mtime = os.path.getmtime(path)
  assert vocab.train_sentencepiece(texts, 64, str(tmp_path)) == path
  assert os.path.getmtime(path) == mtime  # not retrained
  assert vocab.train_sentencepiece(texts[:-1], 64, str(tmp_path)) != path
  assert vocab.train_sentencepiece(texts, 80, str(tmp_path)) != path
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
  v = seqio.SentencePieceVocabulary(path)
  assert v.pad_id == 0 and v.eos_id == 1
  assert v.decode(v.encode("the lazy dog")) == "the lazy dog"
  v2 = vocab.get_vocabulary(kind="sentencepiece", texts=texts, vocab_size=64,
                            cache_dir=str(tmp_path))
  assert v2 == v
