"""Pass 3: weights and compute in float16 (onnxconverter-common), inputs and outputs kept fp32.

Keeping the graph I/O in fp32 means the tracker feeds the same arrays to every bundle; Resize,
the mask-box ArgMax chain and other ops that are unsafe or unsupported in fp16 stay in fp32.
"""

from __future__ import annotations

from pathlib import Path

import onnx

# Ops left in fp32: Resize/ArgMax feed the discrete mask boxes; Range/Gather index maths; Sin/Cos
# of the temporal encodings lose precision at large frame offsets in fp16.
FP32_OPS = ["Resize", "ArgMax", "Range", "Sin", "Cos", "Greater", "Where", "ReduceMax"]


def convert_fp16(src: Path, out: Path) -> Path:
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    converted = float16.convert_float_to_float16(
        model, keep_io_types=True, op_block_list=FP32_OPS, disable_shape_infer=False
    )
    onnx.checker.check_model(converted)
    onnx.save(converted, str(out))
    return out
