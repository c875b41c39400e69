#!/usr/bin/env bash
# Runs the same training command on every worker of a TPU VM (one process per host).
# Arguments go to `python -m lama_jax.train` and are expanded by the workers' shell: quote paths
# that must mean the workers' home. The run survives the ssh session (nohup) and logs to
# ~/lama_jax/train.log on each worker. A preempted or stopped run resumes when this is run again.
#
#   TPU_NAME=lama ZONE=us-central2-b ./launch/tpu_vm_train.sh --config configs/big_lama.py \
#       --workdir '~/bucket/workdirs/big_lama' --config.data.tfds_data_dir='~/bucket/tfds'
#   TPU_NAME=lama ZONE=us-central2-b ./launch/tpu_vm_train.sh --stop     # SIGTERM: save and exit
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME, the TPU VM name}"
: "${ZONE:?set ZONE, e.g. us-central2-b}"
tpu=(gcloud compute tpus tpu-vm)

if [[ "${1:-}" == "--stop" ]]; then
  "${tpu[@]}" ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
    --command 'cd ~/lama_jax && [[ -f train.pid ]] && kill -TERM "$(cat train.pid)" || true'
  exit 0
fi

"${tpu[@]}" ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
cd ~/lama_jax && nohup .venv/bin/python -m lama_jax.train --distributed $* > train.log 2>&1 &
echo \$! > ~/lama_jax/train.pid
echo \"worker \$(hostname): started, logging to ~/lama_jax/train.log\"
"
echo "follow worker 0: ${tpu[*]} ssh $TPU_NAME --zone $ZONE --worker=0 --command 'tail -f ~/lama_jax/train.log'"
