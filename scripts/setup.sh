#!/usr/bin/env bash
# Creates .venv and installs the project with pinned versions. Idempotent: a second run with unchanged
# dependency files does nothing. Needs only Python 3.11 and the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "acg2vec needs Python 3.11 (found $("$PYTHON" --version)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv

stamp=$(cat constraints.txt pyproject.toml clients/python/pyproject.toml testing/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat .venv/.setup-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "installing dependencies into .venv (first run: a few minutes) ..."
  .venv/bin/python -m pip install -q --upgrade pip
  # The local CPU build of torch first, so that no resolver ever pulls a CUDA build.
  .venv/bin/python -m pip install -q torch==2.13.0
  # testing/: the rig that tests and benchmarks share (development only; the server image never installs it).
  .venv/bin/python -m pip install -q -c constraints.txt -e clients/python -e '.[dev]' -e testing
  .venv/bin/python -m pip check
  echo "$stamp" > .venv/.setup-stamp
fi
