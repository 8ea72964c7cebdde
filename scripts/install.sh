#!/usr/bin/env bash
# Creates .venv (if missing) and installs the runtime and test requirements.
# CPU by default; for GPU/TPU see README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
.venv/bin/python -m pip install -q -r requirements.txt -r requirements-test.txt
.venv/bin/python -m pip install -q --no-deps --ignore-requires-python -r requirements-nodeps.txt
.venv/bin/python -m pip install -q --no-deps -e .
