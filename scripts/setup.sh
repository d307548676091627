#!/usr/bin/env bash
# Sets up .venv with the project and its test tools. torch is pinned and installed first:
# an unpinned torch would pull a multi-GB CUDA build where a CPU build is wanted.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==${TORCH_VERSION:-2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -c "import lora_gpt, collab, data; print('collab-lora is installed in .venv')"
