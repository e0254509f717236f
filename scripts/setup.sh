#!/usr/bin/env bash
# Install samurai-onnx with the compiler's and the tests' needs into the current Python.
# torch is installed first and pinned (pip install torch==2.13.0 takes the CPU build where one is
# provided) so that nothing later pulls a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e ".[export,dev]"
# The newest onnxruntime that also exists as onnxruntime-gpu, so that the compiler's passes (fp16
# above all) are tested with what GPU users run; ORT_VERSION overrides it.
"$PY" -m pip install -q "onnxruntime==${ORT_VERSION:-1.31.1}"
if [ "${WITH_ORACLE:-1}" = 1 ]; then
  # The oracle (SAMURAI's own PyTorch code) for parity tests and samurai-validate, never a runtime
  # dependency. Its sdist asks for torch at build time, hence --no-build-isolation.
  "$PY" -m pip install -q hydra-core iopath loguru scipy pillow tqdm
  SAM2_BUILD_CUDA=0 "$PY" -m pip install -q --no-deps --no-build-isolation absolutely-not-samurai==1.0.0
fi
