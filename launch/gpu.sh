#!/usr/bin/env bash
# Trains on GPUs. One host: one process drives all its GPUs (data-parallel over a mesh of all of them).
#   ./launch/gpu.sh --config configs/big_lama.py --workdir workdirs/big_lama [--config.key=value ...]
#   CUDA_VISIBLE_DEVICES=0 ./launch/gpu.sh ...        # one GPU (use --config.batch_size=15 for big_lama)
# Environment: by default ./.venv on the newest supported Python with lama_jax and jax[cuda12]
# (CUDA_EXTRA=cuda13 for CUDA 13 drivers). On an image whose Python already has jax and its CUDA
# plugin (e.g. an NVIDIA JAX container, possibly offline), USE_INSTALLED_JAX=1 installs lama_jax into
# that Python with --no-deps and leaves its jax alone (PYTHON=... picks the interpreter).
# Several hosts: start the same command on each, with a --workdir every host sees (NFS):
#   COORDINATOR=host0:12345 NUM_PROCESSES=2 PROCESS_ID=0 ./launch/gpu.sh ...    # on host0
#   COORDINATOR=host0:12345 NUM_PROCESSES=2 PROCESS_ID=1 ./launch/gpu.sh ...    # on host1
# Under SLURM or Open MPI set DISTRIBUTED=1 instead: JAX reads the process layout from the scheduler.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${USE_INSTALLED_JAX:-0}" == 1 ]]; then
  PY="${PYTHON:-python3}"
  if ! "$PY" -c 'import lama_jax' >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --no-deps --no-build-isolation -e .
  fi
  "$PY" -c 'import jax; print("jax", jax.__version__, "on", jax.devices())'
else
  source launch/python_env.sh
  ensure_venv ".[${CUDA_EXTRA:-cuda12}]" "gpu_${CUDA_EXTRA:-cuda12}_installed"
  PY="$VENV/bin/python"
fi

distributed=()
if [[ -n "${COORDINATOR:-}" ]]; then
  : "${NUM_PROCESSES:?set NUM_PROCESSES with COORDINATOR}" "${PROCESS_ID:?set PROCESS_ID with COORDINATOR}"
  distributed=(--distributed --coordinator_address="$COORDINATOR" --num_processes="$NUM_PROCESSES"
               --process_id="$PROCESS_ID")
elif [[ "${DISTRIBUTED:-0}" == 1 ]]; then
  distributed=(--distributed)
fi
exec "$PY" -m lama_jax.train "${distributed[@]}" "$@"
