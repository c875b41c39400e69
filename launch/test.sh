#!/usr/bin/env bash
# Runs the test suite in ./.venv (created on first use) with the test, parity (torch) and tpu
# (libtpu, for the ahead-of-time TPU compiles of tests/test_aot.py) extras, on the newest supported
# Python found (PYTHON=... to choose; VENV=... for another environment folder).
#   ./launch/test.sh                 # everything, slow tests included
#   ./launch/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
source launch/python_env.sh

ensure_venv '.[test,parity,tpu]' test_installed
exec "$VENV/bin/python" -m pytest "$@"
