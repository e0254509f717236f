"""Pass 4: int8 weights by ONNX Runtime's dynamic quantization (activations quantized per call).

Dynamic quantization needs no calibration data, which a model-conversion tool does not have;
only the op types the model manifest lists are quantized (MatMul/Gemm by default: the bulk of
the FLOPs of the Hiera trunk and of memory attention). ``per_channel`` (model manifest) gives
each output channel of a weight its own scale instead of one per tensor.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

# Integer matmuls and where their weight and its zero point enter (ONNX's MatMulInteger and
# ConvInteger: x, w, x_zero_point, w_zero_point).
_INTEGER_OPS = ("MatMulInteger", "ConvInteger")
_WEIGHT_INPUTS = (1, 3)


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
    model = onnx.load(str(out))
    if unshare_integer_weights(model):
        onnx.save(model, str(out))
    return out


def unshare_integer_weights(model: onnx.ModelProto) -> int:
    """Give every integer matmul its own copy of its weight and weight zero point; returns how
    many inputs were repointed.

    Why: where one weight feeds two matmuls (memory attention's cross-attention projections of
    memories and object pointers), ONNX Runtime 1.31's exact int8 path for CPUs without VNNI
    (``session.x64quantprecision``, see ``runtime/host.py``) rewrites the shared weight once per
    user and fails to load the graph ("Attempt to replace the existing tensor"). The copies
    cost the size of the shared weights (memory attention tiny: 4 x 16 KB).
    """
    inits = {t.name: t for t in model.graph.initializer}
    uses: Counter[str] = Counter()
    repointed = 0
    for node in model.graph.node:
        if node.op_type not in _INTEGER_OPS:
            continue
        for slot in _WEIGHT_INPUTS:
            if slot >= len(node.input) or node.input[slot] not in inits:
                continue
            name = node.input[slot]
            uses[name] += 1
            if uses[name] == 1:
                continue
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[name])
            copy.name = f"{name}_use{uses[name]}"
            while copy.name in inits:
                copy.name += "_"
            inits[copy.name] = copy
            model.graph.initializer.append(copy)
            node.input[slot] = copy.name
            repointed += 1
    return repointed


def weights_as_uint8(model: onnx.ModelProto) -> int:
    """Rewrite the int8 weights of integer matmuls as uint8 (``w + 128``, zero point + 128: the
    same differences, so the same products); returns how many weights were rewritten.

    Why: ONNX Runtime multiplies uint8 x uint8 exactly on every CPU, uint8 x int8 with 16-bit
    saturation on x86 without VNNI or AMX. Its own rewrite to uint8 (``session.x64quantprecision``)
    runs as a graph optimization when a model is loaded, which an ORT-format model (ORT Mobile,
    ``passes/ort_format.py``) does not get (measured on an AVX2-only EPYC: 23% of the largest
    output off). On ARM both kinds run on the same dot-product kernels, so phones lose nothing.
    """
    unshare_integer_weights(model)
    inits = {t.name: t for t in model.graph.initializer}
    done: set[str] = set()
    for node in model.graph.node:
        if node.op_type not in _INTEGER_OPS or len(node.input) < 4:
            continue
        weight, zero = (inits.get(node.input[i]) for i in _WEIGHT_INPUTS)
        if weight is None or zero is None or weight.data_type != onnx.TensorProto.INT8:
            continue
        if zero.data_type != onnx.TensorProto.INT8 or weight.name in done:
            continue
        for tensor in (weight, zero):
            shifted = numpy_helper.to_array(tensor).astype(np.int16) + 128
            tensor.CopyFrom(numpy_helper.from_array(shifted.astype(np.uint8), tensor.name))
        done.add(weight.name)
    return len(done)
