#!/usr/bin/env bash
# The project's checks, the way CI runs them: lint and format (ruff), types (mypy), the docs site's
# strict build (a broken link or anchor fails), then the tests (the notebooks in examples/ included).
# A style, type or docs error fails the run as a failing test does; arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m mypy
site=$(mktemp -d)
"$PY" -m mkdocs build --strict --site-dir "$site"
rm -rf "$site"
"$PY" -m pytest "$@"
