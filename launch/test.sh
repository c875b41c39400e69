#!/usr/bin/env bash
# Runs the test suite in ./.venv (created on first use) with the test and parity extras.
#   ./launch/test.sh                 # everything, slow tests included
#   ./launch/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
# Re-install only when the project's requirements changed since the last install.
stamp=.venv/.lama_jax_installed
if [[ ! -f "$stamp" || setup.cfg -nt "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test,parity]'
  touch "$stamp"
fi
exec .venv/bin/python -m pytest "$@"
