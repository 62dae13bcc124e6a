#!/usr/bin/env bash
# README command 2 (and CI): set up, lint, and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check services models tests testing scripts clients/python/src/acg2vec/client clients/python/src/acg2vec/indexer
exec .venv/bin/pytest -q -p no:cacheprovider "$@"
