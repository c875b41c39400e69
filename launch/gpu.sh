#!/usr/bin/env bash
# Trains on GPUs. One host: one process drives all its GPUs (data-parallel over a mesh of all of them).
#   ./launch/gpu.sh --config configs/big_lama.py --workdir workdirs/big_lama [--config.key=value ...]
#   CUDA_VISIBLE_DEVICES=0 ./launch/gpu.sh ...        # one GPU (use --config.batch_size=15 for big_lama)
# Several hosts: start the same command on each, with a --workdir every host sees (NFS):
#   COORDINATOR=host0:12345 NUM_PROCESSES=2 PROCESS_ID=0 ./launch/gpu.sh ...    # on host0
#   COORDINATOR=host0:12345 NUM_PROCESSES=2 PROCESS_ID=1 ./launch/gpu.sh ...    # on host1
# Under SLURM or Open MPI set DISTRIBUTED=1 instead: JAX reads the process layout from the scheduler.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
CUDA_EXTRA="${CUDA_EXTRA:-cuda12}"  # or cuda13, matching the host's driver
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.lama_jax_gpu_installed
if [[ ! -f "$stamp" || setup.cfg -nt "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e . "jax[$CUDA_EXTRA]>=0.10.2,<0.11"
  touch "$stamp"
fi

distributed=()
if [[ -n "${COORDINATOR:-}" ]]; then
  : "${NUM_PROCESSES:?set NUM_PROCESSES with COORDINATOR}" "${PROCESS_ID:?set PROCESS_ID with COORDINATOR}"
  distributed=(--distributed --coordinator_address="$COORDINATOR" --num_processes="$NUM_PROCESSES"
               --process_id="$PROCESS_ID")
elif [[ "${DISTRIBUTED:-0}" == 1 ]]; then
  distributed=(--distributed)
fi
exec .venv/bin/python -m lama_jax.train "${distributed[@]}" "$@"
