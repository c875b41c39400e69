#!/usr/bin/env bash
# From a fresh clone to a trained tiny LaMa and inpainted sample photos, on CPU, in a few minutes:
#   ./launch/quickstart.sh                 # 300 steps of the tiny config into workdirs/quickstart
#   STEPS=1000 ./launch/quickstart.sh      # train longer (a rerun resumes where the last one stopped)
set -euo pipefail
cd "$(dirname "$0")/.."

source launch/python_env.sh
WORKDIR="${WORKDIR:-workdirs/quickstart}"
STEPS="${STEPS:-300}"
started=$(date +%s)

# 1. Environment: ./.venv on the newest supported Python, lama_jax installed in editable mode
#    (no torch, no test extras).
ensure_venv . quickstart_installed
PY="$VENV/bin/python"

# 2. Train the tiny config on the built-in sample photos (resumes if $WORKDIR has a checkpoint).
echo "== training the tiny config (lama_jax/configs/tiny.py) for $STEPS steps in $WORKDIR"
JAX_PLATFORMS=cpu "$PY" -m lama_jax.train --config tiny --workdir "$WORKDIR" \
  --config.total_steps="$STEPS"

# 3. Export the generator: a model checkpoint plus a StableHLO artifact for CPU (any image size).
echo "== exporting $WORKDIR/model"
rm -rf "$WORKDIR/model"
JAX_PLATFORMS=cpu "$PY" -m lama_jax.export --workdir "$WORKDIR" --output "$WORKDIR/model" --platforms cpu

# 4. Inpaint the sample photos under fixed large masks (LaMa's folder layout).
echo "== inpainting the sample photos"
"$PY" -m lama_jax.data.gen_masks --input data/samples --output "$WORKDIR/inputs" --preset thick_256 --seed 0
JAX_PLATFORMS=cpu "$PY" -m lama_jax.predict --checkpoint "$WORKDIR/model" --input "$WORKDIR/inputs" \
  --output "$WORKDIR/inpainted"

cat <<SUMMARY

Done in $(( $(date +%s) - started )) s.
  inputs (image + mask):  $WORKDIR/inputs
  inpainted photos:       $WORKDIR/inpainted
  validation grids:       $WORKDIR/eval_images  (masked input | mask | prediction | inpainted | target)
  metrics, one per line:  $WORKDIR/metrics.jsonl
  exported model:         $WORKDIR/model  (Inpainter.from_checkpoint, lama_jax.predict, StableHLO)
  TensorBoard logs:       $WORKDIR/tensorboard
      view them with: .venv/bin/pip install tensorboard && .venv/bin/tensorboard --logdir $WORKDIR/tensorboard
SUMMARY
