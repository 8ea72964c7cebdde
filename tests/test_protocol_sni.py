"""docs/PROTOCOL.md's Super-NaturalInstructions table == the operative config of t5xl_sni.gin.

Every row with a key is checked: `gin:` rows against the value t5xl_sni.gin
binds, `default:` rows against the Python default of that argument.
"""

import ast
import importlib
import inspect
import os
import re

import gin
import pytest

from mhr_jax import gin_cli
from mhr_jax.experiment import pipeline  # noqa: F401  (registers `run`)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rows(section: str = "## Super-NaturalInstructions") -> list[list[str]]:
  with open(os.path.join(ROOT, "docs", "PROTOCOL.md"), encoding="utf-8") as f:
    text = f.read()
  body = text.split(section, 1)[1].split("\n## ", 1)[0]
  rows = [[c.strip() for c in line.strip().strip("|").split("|")]
          for line in body.splitlines() if line.startswith("| ")]
  header, rows = rows[0], rows[1:]
  assert header == ["setting", "paper / mttl", "source at c66b20d6", "our key", "ours",
                    "followed"], header
  return rows


def _literal(cell: str):
  match = re.fullmatch(r"`(.*)`", cell)
  return ast.literal_eval(match.group(1)) if match else None


ROWS = [r for r in _rows() if r[3] != "—" and _literal(r[4]) is not None]


@pytest.fixture(scope="module")
def sni_config():
  gin.clear_config()
  gin_cli.parse([os.path.join(ROOT, "configs", "experiments", "t5xl_sni.gin")], [],
                [os.path.join(ROOT, "configs"), ROOT])
  yield
  gin.clear_config()


def test_table_covers_the_protocol():
  assert len(ROWS) >= 20
  assert all(re.search(r"\.(py|json|txt):\d", r[2]) or "json" in r[2] for r in _rows())


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_operative_config_matches_protocol_row(row, sni_config):
  kind, key = re.fullmatch(r"(gin|default): `(.*)`", row[3]).groups()
  expected = _literal(row[4])
  if kind == "gin":
    actual = gin.query_parameter(key)
  else:
    module, function, argument = re.fullmatch(r"(.*)\.(\w+)\((\w+)\)", key).groups()
    actual = inspect.signature(
        getattr(importlib.import_module(module), function)).parameters[argument].default
  assert actual == expected, (row[0], key, actual, expected)
