"""Vocabularies: a checkpoint's SentencePiece model, bytes, or a locally trained model.

All three follow the T5 convention the model relies on: id 0 is padding and
the decoder start token, id 1 is end-of-sequence. Nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from typing import Iterable, Optional, Sequence

import seqio
import sentencepiece as spm

from mhr_jax import errors
from tasks import synthetic

KINDS = ("byte", "sentencepiece", "checkpoint")
PAD_ID, EOS_ID = 0, 1
# Bumped whenever the trainer options below change, so old cache entries are not reused.
_SPM_OPTIONS_VERSION = 1


def default_cache_dir() -> str:
  """`$MHR_JAX_CACHE_DIR/sentencepiece`, default ~/.cache/mhr_jax/sentencepiece."""
  root = os.environ.get("MHR_JAX_CACHE_DIR", os.path.join("~", ".cache", "mhr_jax"))
  return os.path.join(os.path.expanduser(root), "sentencepiece")


def checkpoint_vocabulary(checkpoint_dir: str,
                          extra_ids: Optional[int] = None) -> seqio.SentencePieceVocabulary:
  """The `spiece.model` of a Hugging Face T5 checkpoint directory.

  `extra_ids` (the <extra_id_*> sentinels appended after the pieces) defaults
  to the directory's tokenizer_config.json value, else 0.
  """
  path = os.path.join(checkpoint_dir, "spiece.model")
  if not os.path.isfile(path):
    present = sorted(os.listdir(checkpoint_dir)) if os.path.isdir(checkpoint_dir) else None
    raise errors.MissingInputError(
        f"no SentencePiece model at {path!r} (a Hugging Face T5 checkpoint dir has "
        f"spiece.model); directory contents: {present}")
  if extra_ids is None:
    extra_ids = 0
    config = os.path.join(checkpoint_dir, "tokenizer_config.json")
    if os.path.isfile(config):
      with open(config) as f:
        extra_ids = int(json.load(f).get("extra_ids", 0) or 0)
  return seqio.SentencePieceVocabulary(path, extra_ids=extra_ids)


def _training_lines(texts: Iterable[str]) -> list[str]:
  return [line for t in texts for line in t.splitlines() if line.strip()]


def train_sentencepiece(texts: Sequence[str], vocab_size: int,
                        cache_dir: Optional[str] = None, model_type: str = "unigram") -> str:
  """Trains a SentencePiece model on `texts` (or reuses the cached one); returns its path.

  The file name is a hash of the texts and options, so identical inputs hit
  the cache. The model is trained in a temporary directory and renamed into
  place, so a crash never leaves a partial model behind. Ids: pad 0, eos 1,
  unk 2, no bos. `vocab_size` is an upper bound (small corpora get fewer pieces).
  """
  lines = _training_lines(texts)
  if not lines:
    raise ValueError("train_sentencepiece needs at least one non-empty text")
  cache_dir = os.path.expanduser(cache_dir or default_cache_dir())
  digest = hashlib.sha256()
  digest.update(f"v{_SPM_OPTIONS_VERSION}|{vocab_size}|{model_type}|".encode())
  for line in lines:
    digest.update(line.encode("utf-8") + b"\0")
  path = os.path.join(cache_dir, f"spm_{model_type}_{vocab_size}_{digest.hexdigest()[:16]}.model")
  if os.path.isfile(path):
    return path
  os.makedirs(cache_dir, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=cache_dir, prefix=".tmp_spm_")
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=os.path.join(tmp, "m"),
        vocab_size=vocab_size, model_type=model_type, pad_id=PAD_ID, eos_id=EOS_ID,
        unk_id=2, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0,
        num_threads=1, minloglevel=2)
    os.replace(os.path.join(tmp, "m.model"), path)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return path


def get_vocabulary(checkpoint_dir: Optional[str] = None, kind: str = "byte", *,
                   texts: Optional[Sequence[str]] = None, vocab_size: int = 1000,
                   cache_dir: Optional[str] = None) -> seqio.Vocabulary:
  """Returns the vocabulary to tokenize tasks with.

  Args:
    checkpoint_dir: a Hugging Face T5 directory; when given, its spiece.model
      is used whatever `kind` says.
    kind: 'byte' (seqio.ByteVocabulary, the synthetic default), 'sentencepiece'
      (trained on `texts`, default: the synthetic tasks' training text) or
      'checkpoint' (requires `checkpoint_dir`).
    texts, vocab_size, cache_dir: for kind='sentencepiece'.
  """
  if checkpoint_dir:
    return checkpoint_vocabulary(checkpoint_dir)
  if kind == "byte":
    return seqio.ByteVocabulary()
  if kind == "sentencepiece":
    if texts is None:
      texts = synthetic.training_texts(synthetic.SyntheticSpec())
    return seqio.SentencePieceVocabulary(train_sentencepiece(texts, vocab_size, cache_dir))
  if kind == "checkpoint":
    raise ValueError("vocabulary kind 'checkpoint' needs checkpoint_dir (a Hugging Face T5 "
                     "directory holding spiece.model)")
  raise ValueError(f"unknown vocabulary kind {kind!r}; valid kinds: {list(KINDS)}")
