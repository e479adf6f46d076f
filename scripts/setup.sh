#!/usr/bin/env bash
# Create .venv and install lmforge with its test tools. Torch comes first, pinned, so that pip
# does not pull the multi-GB CUDA build as a dependency. On a GPU machine, set TORCH_SPEC
# (e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128").
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# shellcheck disable=SC2086
.venv/bin/python -m pip install --quiet ${TORCH_SPEC:-torch==2.13.0}
.venv/bin/python -m pip install --quiet -e '.[dev]'
