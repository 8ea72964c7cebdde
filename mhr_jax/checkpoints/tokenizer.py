"""The tokenizer saved next to a HF checkpoint (local files only, never downloaded)."""

from __future__ import annotations

import os

from mhr_jax import errors

# Any one of these marks a directory that holds a saved tokenizer.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")


def load_tokenizer(directory: str):
  """Returns the transformers tokenizer saved in `directory` (e.g. a T5Tokenizer).

  Raises:
    FileNotFoundError: `directory` does not exist or holds none of
      TOKENIZER_FILES (only local directories are read).
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise errors.MissingInputError(
        f"tokenizer directory {directory!r} does not exist (only local directories are read; "
        "nothing is downloaded)")
  if not any(os.path.exists(os.path.join(directory, f)) for f in TOKENIZER_FILES):
    raise errors.MissingInputError(
        f"no tokenizer in {directory!r}: expected one of {list(TOKENIZER_FILES)}, found "
        f"{sorted(os.listdir(directory))} (save one with `tokenizer.save_pretrained(dir)`)")
  # Deferred: transformers takes ~2-4 s to import and only HF-checkpoint runs need it.
  from transformers import AutoTokenizer  # pylint: disable=g-import-not-at-top
  return AutoTokenizer.from_pretrained(directory, local_files_only=True)
