#!/usr/bin/env bash
# Set up from scratch, then run the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=${PYTHON:-python3}
"$PY" -m ruff check compiler runtime scripts tests
"$PY" -m mypy compiler runtime
"$PY" -m pytest -q -ra --durations=30 tests  # the 30 slowest tests: what to shrink when CI nears 30 min
