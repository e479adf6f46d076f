#!/usr/bin/env bash
# Set up, train the quickstart model on the Python standard library, then sample from it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/lmforge train --config quickstart "$@"
.venv/bin/lmforge sample --checkpoint runs/quickstart --prompt "def " --max_new_tokens 200 --temperature 0.7 --top_k 50
