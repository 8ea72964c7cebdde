"""Shared test isolation: every test starts with the byte vocabulary.

The run pipeline re-registers every task with the checkpoint's vocabulary
(`tasks.set_vocabulary`), which is right for a process that runs one experiment
but leaks across tests that share a pytest-xdist worker. Tests that read token
ids as bytes would then see SentencePiece ids, depending on which tests ran
before them on the same worker.

Fixtures and helpers shared by several test modules are in tests/utils.py
(torch references in hf_reference.py, task data stand-ins in task_fixtures.py).
"""

import pytest

from tasks import registry


@pytest.fixture(autouse=True)
def byte_vocabulary():
  registry.reset_vocabulary()
  yield
