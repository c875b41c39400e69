#!/usr/bin/env bash
# Runs the test suite in ./.venv (created on first use) with the test and parity extras, on the
# newest supported Python found (PYTHON=... to choose; VENV=... for another environment folder).
#   ./launch/test.sh                 # everything, slow tests included
#   ./launch/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/python_env.sh

ensure_venv '.[test,parity]' test_installed
exec "$VENV/bin/python" -m pytest "$@"
