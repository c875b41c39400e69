#!/usr/bin/env bash
# Creates a Cloud TPU VM (unless it exists) and installs Python 3.12, lama_jax and jax[tpu] (the
# tested jax range; jax[tpu] brings the libtpu that jax release pins) on every worker.
# Safe to rerun: it re-ships the working tree and reinstalls only what changed.
# The runtime image follows the accelerator (Cloud TPU's current images for JAX): v6e
# v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base;
# RUNTIME_VERSION=... overrides it. They ship Python 3.10, so Python 3.12 comes from the deadsnakes PPA.
#
#   TPU_NAME=lama ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 ./launch/tpu_vm_setup.sh
#   BUCKET=my-bucket ...   also mounts gs://my-bucket at ~/bucket on every worker (gcsfuse), a folder
#                          all workers see: put the TFDS data and the --workdir there.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${TPU_NAME:?set TPU_NAME, the TPU VM name}"
: "${ZONE:?set ZONE, e.g. us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
case "$ACCELERATOR_TYPE" in
  v6e-*) default_runtime=v2-alpha-tpuv6e ;;
  v5p-*) default_runtime=v2-alpha-tpuv5 ;;
  v5litepod-* | v5e-*) default_runtime=v2-alpha-tpuv5-lite ;;
  *) default_runtime=tpu-ubuntu2204-base ;;
esac
RUNTIME_VERSION="${RUNTIME_VERSION:-$default_runtime}"
BUCKET="${BUCKET:-}"
tpu=(gcloud compute tpus tpu-vm)

if ! "${tpu[@]}" describe "$TPU_NAME" --zone "$ZONE" >/dev/null 2>&1; then
  echo "== creating $TPU_NAME ($ACCELERATOR_TYPE) in $ZONE"
  "${tpu[@]}" create "$TPU_NAME" --zone "$ZONE" --accelerator-type "$ACCELERATOR_TYPE" \
    --version "$RUNTIME_VERSION"
fi

echo "== copying the working tree to every worker"
archive="$(mktemp -d)/lama_jax.tgz"
tar czf "$archive" --exclude='.venv*' --exclude=.git --exclude=workdirs --exclude=__pycache__ .
"${tpu[@]}" scp "$archive" "$TPU_NAME":lama_jax.tgz --zone "$ZONE" --worker=all

echo "== installing on every worker"
"${tpu[@]}" ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
set -euo pipefail
# jax 0.11 and later need Python >= 3.12; the TPU images ship 3.10.
if ! command -v python3.12 >/dev/null; then
  sudo add-apt-repository -y ppa:deadsnakes/ppa >/dev/null
  sudo apt-get update -qq && sudo apt-get install -y -qq python3.12 python3.12-venv
fi
mkdir -p ~/lama_jax && tar xzf ~/lama_jax.tgz -C ~/lama_jax && cd ~/lama_jax
PYTHON=python3.12 VENV=.venv
source launch/python_env.sh
ensure_venv '.[tpu]' tpu_installed
if [[ -n '$BUCKET' ]] && ! mountpoint -q ~/bucket; then
  command -v gcsfuse >/dev/null || { echo 'install gcsfuse first: https://cloud.google.com/storage/docs/gcsfuse-install' >&2; exit 1; }
  mkdir -p ~/bucket && gcsfuse --implicit-dirs '$BUCKET' ~/bucket
fi
.venv/bin/python -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.device_count())'
"
echo "== ready: ./launch/tpu_vm_train.sh --config configs/big_lama.py --workdir ~/bucket/workdirs/big_lama"
