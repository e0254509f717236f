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
#   (default "bench nodes diagnose") what runs per bundle: samurai-bench, the GPU time of every
#   node of every graph and form (gpu_diagnose.py --node-times: blocking CUDA launches) into
#   OUT/nodes-TARGET/nodes.md, and scripts/gpu_diagnose.py
#   (CPU vs GPU parity per graph and node, per-graph time with prefer_nhwc / CUDA graphs / dense
#   depthwise convolutions, profiler top nodes, the reference's kernels for the memory encoder
#   and decoder, CPU vs GPU tracking IoU) into OUT/diag-TARGET.
#   VARIANTS (default "nograph+noprefetch": the packaged cuda targets without their CUDA graphs
#   and prefetch, so the same run shows what those add) are variants of each target
#   (scripts/target_variant.py), compiled beside it and benchmarked in the same samurai-bench
#   run (--compare: one reference, same-run ratios): graph / nograph (enable_cuda_graph: CUDA
#   graphs per run signature), prefetch / noprefetch (the
#   next frame encoded while this one is tracked, runtime/ahead.py), nhwc (the CUDA
#   provider's prefer_nhwc), dense (depthwise: dense as the memory encoder's only form),
#   unfused (fused_attention: false as the only form); join with + (dense+graph);
#   TARGET:VARIANT applies to that target only (cuda-fp16:unfused). A target with
#   alternatives (both packaged cuda targets: layernorm) runs the faster form that agrees with
#   the CPU, and the bench's engine line shows each form's time (or how far off it was).
#   VARIANTS="" benchmarks the targets alone.
#   Every bundle is compiled first, all at the same time (CPU work; a variant that changes
#   how graphs run only (RUNTIME_ONLY: graph, nograph, prefetch, noprefetch, nhwc) is a copy of its target's bundle instead, with no
#   compile); then the GPU steps run one at a time. DEADLINE (seconds from the start; default 0: none) bounds a lent machine's call:
#   each step gets what is left (SIGINT at the end) and a step with under 30 s left is skipped,
#   so the results so far and OUT/timeline.txt always come back.
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
STEPS=${STEPS:-bench nodes diagnose}
VARIANTS=${VARIANTS-nograph+noprefetch}
DEADLINE=${DEADLINE:-0}
REFERENCE_RUNS=${REFERENCE_RUNS:-2}  # PyTorch runs per reference side: the fastest counts
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
compile() {  # compile TARGET (a name or a file) into $WORK/tiny-NAME (kept if it is already there)
  if [ -f "$WORK/tiny-$2/bundle.yaml" ]; then return 0; fi
  samurai-compile tiny --target "$1" --checkpoint "$CKPT" --out "$WORK/tiny-$2" \
    >"$WORK/compile-$2.log" 2>&1 || { echo "compile $2 failed:"; tail -n 20 "$WORK/compile-$2.log"; return 1; }
  mark "compiled $2"
}
left() {  # seconds left before DEADLINE (seconds since the start; 0: no deadline)
  if [ "$DEADLINE" -eq 0 ]; then echo 100000; else echo $((DEADLINE - SECONDS)); fi
}
step() {  # step NAME COMMAND...: runs COMMAND within what is left of DEADLINE; a late step is skipped
  local name=$1; shift
  local budget; budget=$(left)
  if [ "$budget" -lt 30 ]; then mark "skipped $name (${budget}s left before DEADLINE)"; return 0; fi
  timeout --signal=INT --kill-after=10 "$budget" "$@" || echo "$name failed or ran out of time (rc $?)"
  mark "$name"
}
variants_of() {  # the variants of TARGET in VARIANTS, one per line
  local target=$1 variant
  for variant in $VARIANTS; do
    if [[ "$variant" == *:* ]]; then
      [[ "${variant%%:*}" == "$target" ]] || continue
      variant=${variant#*:}
    fi
    echo "$variant"
  done
}
mark "start: TARGETS=$TARGETS STEPS=$STEPS VARIANTS=$VARIANTS FRAMES=$FRAMES REPEATS=$REPEATS DEADLINE=$DEADLINE"
# Every bundle first, at the same time (compiling is CPU work, one process per bundle): the GPU steps
# after it then run one at a time, so their timings do not share the GPU.
runtime_only() {  # whether every part of VARIANT changes how graphs run only (target_variant.py's RUNTIME_ONLY)
  python3 -c 'import sys; from scripts.target_variant import RUNTIME_ONLY as R; sys.exit(any(p not in R for p in sys.argv[1].split("+")))' "$1"
}
pids=()
for target in $TARGETS; do
  compile "$target" "$target" & pids+=($!)
  if [[ " $STEPS " == *" bench "* ]]; then
    for variant in $(variants_of "$target"); do
      runtime_only "$variant" && continue  # made from the compiled bundle below
      python3 scripts/target_variant.py "$target" "$variant" "$WORK/targets/$target-$variant.yaml" >/dev/null
      compile "$WORK/targets/$target-$variant.yaml" "$target-$variant" & pids+=($!)
    done
  fi
done
for pid in "${pids[@]}"; do wait "$pid" || true; done
# Variants that change how graphs run only: a copy of the compiled bundle (same graph files,
# the variant in its recorded target), no compile
for target in $TARGETS; do
  [[ " $STEPS " == *" bench "* && -f "$WORK/tiny-$target/bundle.yaml" ]] || continue
  for variant in $(variants_of "$target"); do
    runtime_only "$variant" && [ ! -f "$WORK/tiny-$target-$variant/bundle.yaml" ] || continue
    python3 scripts/target_variant.py --bundle "$WORK/tiny-$target" "$variant" "$WORK/tiny-$target-$variant" \
      >/dev/null && mark "made $target-$variant from the $target bundle"
  done
done
# The benchmarks of every target first, then the diagnoses: under a DEADLINE the figures come first.
for target in $TARGETS; do
  [ -f "$WORK/tiny-$target/bundle.yaml" ] || { echo "no $target bundle: skipping it"; continue; }
  [[ " $STEPS " == *" bench "* ]] || continue
  compare=()
  for variant in $(variants_of "$target"); do
    if [ -f "$WORK/tiny-$target-$variant/bundle.yaml" ]; then compare+=(--compare "$WORK/tiny-$target-$variant"); fi
  done
  step "bench $target" samurai-bench "$WORK/tiny-$target" ${compare[@]+"${compare[@]}"} --device "$DEVICE" \
    --checkpoint "$CKPT" --video "$VIDEO" --bbox "$BOX" --frames "$FRAMES" --objects "$OBJECTS" \
    --batch-sizes 1,4 --repeats "$REPEATS" --reference-runs "$REFERENCE_RUNS" \
    --json "$OUT/bench-$target.json" --markdown "$OUT/bench-$target.md"
done
for target in $TARGETS; do
  [ -f "$WORK/tiny-$target/bundle.yaml" ] || continue
  [[ " $STEPS " == *" nodes "* ]] || continue
  step "nodes $target" python3 scripts/gpu_diagnose.py "$WORK/tiny-$target" --out "$OUT/nodes-$target" \
    --device "$DEVICE" --node-times
done
for target in $TARGETS; do
  [ -f "$WORK/tiny-$target/bundle.yaml" ] || continue
  [[ " $STEPS " == *" diagnose "* ]] || continue
  step "diagnose $target" python3 scripts/gpu_diagnose.py "$WORK/tiny-$target" --out "$OUT/diag-$target" \
    --device "$DEVICE" --repeats "$REPEATS" --frames 10 --checkpoint "$CKPT"
done
echo "results in $OUT: bench-TARGET.md (+ .json), nodes-TARGET/nodes.md, diag-TARGET/diagnose.md (+ .json), gpu.txt, timeline.txt"
