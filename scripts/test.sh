#!/usr/bin/env bash
# The test command (README.md and .ci/run call exactly this).
set -uo pipefail
cd "$(dirname "$0")/.."
export TF_CPP_MIN_LOG_LEVEL=2 JAX_PLATFORMS=cpu
exec .venv/bin/python -m pytest tests -q -n 2 --durations=15 "$@"
