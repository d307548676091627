#!/usr/bin/env bash
# The project's checks, the way CI runs them: lint and format (ruff), types (mypy), then the tests.
# A style or type error fails the run as a failing test does; arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m mypy
"$PY" -m pytest "$@"
