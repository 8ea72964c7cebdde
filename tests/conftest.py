"""Shared test isolation: every test starts with the byte vocabulary.

The run pipeline re-registers every task with the checkpoint's vocabulary
(`tasks.set_vocabulary`), which is right for a process that runs one experiment
but leaks across tests that share a pytest-xdist worker. Tests that read token
ids as bytes would then see SentencePiece ids, depending on which tests ran
before them on the same worker.

Fixtures and helpers shared by several test modules are in tests/utils.py
(torch references in hf_reference.py, task data stand-ins in task_fixtures.py).
"""

import os
import tempfile

import pytest

# Hermetic: never the user's prepared datasets. `import tasks` registers whatever is
# under ~/.cache/mhr_jax (a prepared BIG-bench adds 1,001 tasks), so the data
# directories point at a path that does not exist, before the first import of
# `tasks`; tests that want data set these variables to fixtures themselves.
_NO_DATA = os.path.join(tempfile.gettempdir(), "mhr_jax_tests_have_no_data")
for _name in ("MHR_JAX_BIGBENCH_DIR", "MHR_JAX_P3_DIR", "MHR_JAX_NI_DIR"):
  os.environ[_name] = os.path.join(_NO_DATA, _name.lower())

from tasks import registry  # noqa: E402  (after the variables above)


@pytest.fixture(autouse=True)
def byte_vocabulary():
  registry.reset_vocabulary()
  yield


def pytest_collection_modifyitems(items):
  """Tests marked `heavy` run first (stable order otherwise).

  scripts/test.sh splits the suite in this order between its two workers and
  lets an idle worker take the not yet started tests at the end of the other's
  queue (`--dist worksteal`): with the long pipeline runs started first, the
  short tests fill in behind them and both workers finish together. Tests that
  share an expensive module fixture are all marked, so they stay adjacent.
  (pytest-xdist's `loadgroup` does not group under pytest 9.)
  """
  items.sort(key=lambda item: item.get_closest_marker("heavy") is None)
