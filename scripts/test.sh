#!/usr/bin/env bash
# Set up, lint, build the docs strictly and run the whole test suite (this is what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check src tests benchmarks scripts
.venv/bin/ruff format --check src tests benchmarks scripts
# The manual: a broken link or anchor between docs/ pages fails here (mkdocs.yml sets strict)
site=$(mktemp -d)
.venv/bin/mkdocs build --strict --site-dir "$site"
rm -rf "$site"
# --durations: the slowest tests show in every CI log, so a test that grows is seen
.venv/bin/python -m pytest -q --durations=25 "$@"
