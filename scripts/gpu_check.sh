#!/usr/bin/env bash
# The GPU measurements of the README's "NVIDIA GPUs" section, in one run on a machine with an NVIDIA
# GPU and onnxruntime-gpu (see ../shared/gpu/pack.sh for a machine without package access):
#   - a seeded random-weight SAM 2.1 tiny checkpoint (the official one cannot be downloaded here),
#   - the cuda (fp32, TF32 off) and cuda-fp16 bundles,
#   - samurai-bench on the GPU for each: per graph, end to end with 1 and 4 objects (graph time
#     and host time per frame), the PyTorch reference in fp32 and in SAMURAI's fp16 autocast in
#     the same run, per-frame mask IoU against the fp32 reference.
# usage: bash scripts/gpu_check.sh OUT_DIR [VIDEO]
#   VIDEO defaults to a 1280x720 synthetic clip; FRAMES (default 40) frames, steady state from 16.
#   DEVICE=cpu runs the same steps on the CPU (a dry run of the script; slow).
#   WORK (default OUT_DIR/work) holds the checkpoint, clip and bundles; REPEATS (default 10) timed
#   runs per graph; TARGETS (default "cuda-fp16 cuda") the bundles, in that order; STEPS
#   (default "bench diagnose") what runs per bundle: samurai-bench, and scripts/gpu_diagnose.py
#   (CPU vs GPU parity per graph and node, per-graph time with prefer_nhwc / CUDA graphs / dense
#   depthwise convolutions, profiler top nodes, the reference's kernels for the memory encoder
#   and decoder, CPU vs GPU tracking IoU) into OUT/diag-TARGET.
#   VARIANTS (default "graph") are variants of each target (scripts/target_variant.py),
#   compiled beside it and benchmarked in the same samurai-bench run (--compare: one reference,
#   same-run ratios): graph (enable_cuda_graph: CUDA graphs per run signature), nhwc (the CUDA
#   provider's prefer_nhwc), dense (depthwise: dense as the memory encoder's only form),
#   unfused (fused_attention: false as the only form); join with + (dense+graph);
#   TARGET:VARIANT applies to that target only (cuda:unfused). The targets themselves carry
#   dense (and cuda unfused) as alternatives: their bundles run the faster form, and the bench's
#   engine line shows each form's time.
#   VARIANTS="" benchmarks the targets alone.
set -euo pipefail
OUT=${1:?usage: bash scripts/gpu_check.sh OUT_DIR [VIDEO]}
VIDEO=${2:-}
DEVICE=${DEVICE:-cuda}
FRAMES=${FRAMES:-40}
OBJECTS=${OBJECTS:-1,4}
cd "$(dirname "$0")/.."
WORK=${WORK:-$OUT/work}
REPEATS=${REPEATS:-10}
TARGETS=${TARGETS:-cuda-fp16 cuda}
STEPS=${STEPS:-bench diagnose}
VARIANTS=${VARIANTS-graph}
mkdir -p "$OUT" "$WORK"
CKPT="$WORK/sam2.1_hiera_tiny.pt"
[ -f "$CKPT" ] || python3 -m samurai_onnx.compiler.random_checkpoint --model tiny --out "$CKPT"
BOX=${BOX:-}
if [ -z "$VIDEO" ]; then
  VIDEO="$WORK/synthetic_720p.mp4"
  BOX=$(python3 scripts/make_synthetic_video.py "$VIDEO" --frames "$FRAMES" --width 1280 --height 720)
fi
BOX=${BOX:?give the first-frame box of VIDEO as BOX=x,y,w,h}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt" 2>&1 || true
mark() {  # how long each step took, for planning the next run: OUT/timeline.txt
  echo "[${SECONDS}s] $*" | tee -a "$OUT/timeline.txt"
}
compile() {  # compile TARGET (a name or a file) into $WORK/tiny-NAME
  samurai-compile tiny --target "$1" --checkpoint "$CKPT" --out "$WORK/tiny-$2" \
    >"$WORK/compile-$2.log" 2>&1 || { cat "$WORK/compile-$2.log"; exit 1; }
  mark "compiled $2"
}
mark "start: TARGETS=$TARGETS STEPS=$STEPS VARIANTS=$VARIANTS FRAMES=$FRAMES REPEATS=$REPEATS"
for target in $TARGETS; do
  compile "$target" "$target"
  compare=()
  for variant in $VARIANTS; do
    [[ " $STEPS " == *" bench "* ]] || break
    if [[ "$variant" == *:* ]]; then
      [[ "${variant%%:*}" == "$target" ]] || continue
      variant=${variant#*:}
    fi
    python3 scripts/target_variant.py "$target" "$variant" "$WORK/targets/$target-$variant.yaml" >/dev/null
    compile "$WORK/targets/$target-$variant.yaml" "$target-$variant"
    compare+=(--compare "$WORK/tiny-$target-$variant")
  done
  if [[ " $STEPS " == *" bench "* ]]; then
    samurai-bench "$WORK/tiny-$target" ${compare[@]+"${compare[@]}"} --device "$DEVICE" --checkpoint "$CKPT" \
      --video "$VIDEO" --bbox "$BOX" --frames "$FRAMES" --objects "$OBJECTS" \
      --batch-sizes 1,4 --repeats "$REPEATS" \
      --json "$OUT/bench-$target.json" --markdown "$OUT/bench-$target.md" ||
      echo "samurai-bench failed for $target (see above)"
    mark "bench $target"
  fi
  if [[ " $STEPS " == *" diagnose "* ]]; then
    python3 scripts/gpu_diagnose.py "$WORK/tiny-$target" --out "$OUT/diag-$target" \
      --device "$DEVICE" --repeats "$REPEATS" --frames 10 --checkpoint "$CKPT" ||
      echo "gpu_diagnose.py failed for $target (see above)"
    mark "diagnose $target"
  fi
done
echo "results in $OUT: bench-TARGET.md (+ .json), diag-TARGET/diagnose.md (+ .json), gpu.txt, timeline.txt"
