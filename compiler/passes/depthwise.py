"""Depthwise convolutions rewritten as dense ones with block-diagonal weights (a GPU experiment).

Why: ONNX Runtime's CUDA provider runs every ``Conv`` through cuDNN, whose grouped / depthwise
kernels are known to be slow in some configurations (PyTorch ships its own depthwise kernels
for that reason). The memory encoder's fuser has two 7x7 depthwise convolutions over 256
channels, and on an H100 the ONNX memory encoder took 9.5 ms (fp16) against PyTorch's 2 ms with
its time in ``Conv``. A dense convolution with a block-diagonal weight computes the same
numbers (the off-diagonal weights are exact zeros, so each output adds the same 49 products plus
zeros; only the summation order may differ, as between any two convolution algorithms) and runs
on cuDNN's tensor-core kernels, at 256x the multiply-adds (26 GFLOP per 64x64 layer).

Whether that wins is a measurement on the GPU (``scripts/gpu_diagnose.py`` times both); no
target uses this rewrite until it is measured, and it would cost a CPU 256x the work.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _group(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "group":
            return int(attr.i)
    return 1


def densify_depthwise(model: onnx.ModelProto, *, max_channels: int = 1024) -> int:
    """Rewrite, in place, every depthwise ``Conv`` of ``model`` whose weight is an initializer.

    Depthwise = ``group`` equal to the output channels with one input channel per group (channel
    multiplier 1). ``max_channels`` bounds the dense weight (C x C x kh x kw). Returns how many
    convolutions were rewritten.
    """
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    rewritten = 0
    for node in model.graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        groups = _group(node)
        weight = inits.get(node.input[1])
        if groups <= 1 or weight is None or uses.get(weight.name, 0) != 1:
            continue
        w = numpy_helper.to_array(weight)
        if w.ndim != 4 or w.shape[0] != groups or w.shape[1] != 1 or groups > max_channels:
            continue
        dense = np.zeros((groups, groups, *w.shape[2:]), dtype=w.dtype)
        idx = np.arange(groups)
        dense[idx, idx] = w[:, 0]
        weight.CopyFrom(numpy_helper.from_array(dense, weight.name))
        kept = [a for a in node.attribute if a.name != "group"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("group", 1)])
        rewritten += 1
    return rewritten
