#!/usr/bin/env bash
# The main job on a fresh machine: install, compile SAMURAI tiny for the CPU, track two objects.
# Uses the official sam2.1_hiera_tiny.pt when it is in the cache (or downloadable); otherwise a
# seeded random-weight checkpoint, which exercises everything but tracks nothing meaningful.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_ORACLE=0 bash scripts/setup.sh
PY=${PYTHON:-python3}
CKPT_ARGS=()
CACHE="${SAMURAI_ONNX_CACHE:-$HOME/.cache/samurai-onnx}/checkpoints/sam2.1_hiera_tiny.pt"
if [ ! -f "$CACHE" ]; then
  echo "note: $CACHE not found (no internet here?); using random weights, tracks are meaningless"
  "$PY" -m samurai_onnx.compiler.random_checkpoint --model tiny --out checkpoints/random-tiny.pt
  CKPT_ARGS=(--checkpoint checkpoints/random-tiny.pt)
fi
samurai-compile manifests/tiny.yaml --target cpu "${CKPT_ARGS[@]}" --out bundles/tiny-cpu
VIDEO=../shared/videos/cups.mp4
if [ -f "$VIDEO" ]; then
  samurai-run bundles/tiny-cpu "$VIDEO" --bbox 574,294,162,246 --bbox 364,424,74,76 \
    --max-frames "${MAX_FRAMES:-20}" --output-video out/cups_tracked.mp4 \
    --boxes-out out/cups_boxes.txt --masks-dir out/cups_masks --jsonl out/cups.jsonl
else
  "$PY" scripts/make_synthetic_video.py out/synthetic.mp4
  samurai-run bundles/tiny-cpu out/synthetic.mp4 --bbox 100,120,90,70 \
    --output-video out/synthetic_tracked.mp4 --boxes-out out/synthetic_boxes.txt --jsonl out/synthetic.jsonl
fi
echo "outputs in out/"
