"""Pass 4: int8 weights by ONNX Runtime's dynamic quantization (activations quantized per call).

Dynamic quantization needs no calibration data, which a model-conversion tool does not have;
only the op types the model manifest lists are quantized (MatMul/Gemm by default: the bulk of
the FLOPs of the Hiera trunk and of memory attention). ``per_channel`` (model manifest) gives
each output channel of a weight its own scale instead of one per tensor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def quantize_int8(src: Path, out: Path, settings: dict[str, Any]) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(out),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(settings.get("op_types") or ["MatMul", "Gemm"]),
        per_channel=bool(settings.get("per_channel", False)),
        reduce_range=False,
    )
    return out
