"""Shared test isolation: every test starts with the byte vocabulary.

The run pipeline re-registers every task with the checkpoint's vocabulary
(`tasks.set_vocabulary`), which is right for a process that runs one experiment
but leaks across tests that share a pytest-xdist worker. Tests that read token
ids as bytes would then see SentencePiece ids, depending on which tests ran
before them on the same worker.
"""

import pytest
import seqio


@pytest.fixture(autouse=True)
def byte_vocabulary():
  from tasks import registry  # pylint: disable=import-outside-toplevel
  byte = seqio.ByteVocabulary()
  if any(spec.vocabulary != byte for spec in registry._TASKS.values()):  # pylint: disable=protected-access
    registry.set_vocabulary(byte)
  yield
