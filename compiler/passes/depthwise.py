"""Depthwise convolutions rewritten as dense ones with block-diagonal weights (a GPU experiment).

Why: ONNX Runtime's CUDA provider runs every ``Conv`` through cuDNN, whose grouped / depthwise
kernels are known to be slow in some configurations (PyTorch ships its own depthwise kernels
for that reason). The memory encoder's fuser has two 7x7 depthwise convolutions over 256
channels, and on an H100 the ONNX memory encoder took 9.5 ms (fp16) against PyTorch's 2 ms with
its time in ``Conv``. A dense convolution with a block-diagonal weight computes the same
numbers (the off-diagonal weights are exact zeros, so each output adds the same 49 products plus
zeros; only the summation order may differ, as between any two convolution algorithms) and runs
on cuDNN's tensor-core kernels, at 256x the multiply-adds (26 GFLOP per 64x64 layer).

A target opts in with ``depthwise: dense`` (the compiler then runs this pass after simplify, on
every graph with depthwise convolutions: in SAM 2.1 only the memory encoder). Measured, it lost
on both GPUs tried (memory encoder 12.3 vs 9.7 ms in fp16 and 14.6 vs 12.2 in fp32 on an H200;
also on an H100), and it costs a CPU 256x the work, so no packaged target uses it; it stays a
target option for other GPUs (``scripts/gpu_diagnose.py`` times both forms per graph).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _group(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "group":
            return int(attr.i)
    return 1


def _depthwise_weight(
    node: onnx.NodeProto, inits: dict[str, onnx.TensorProto], uses: dict[str, int], limit: int
) -> onnx.TensorProto | None:
    """The weight initializer of a depthwise ``Conv`` that can be rewritten, else None."""
    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    groups = _group(node)
    weight = inits.get(node.input[1])
    if groups <= 1 or weight is None or uses.get(weight.name, 0) != 1:
        return None
    dims = list(weight.dims)
    if len(dims) != 4 or dims[0] != groups or dims[1] != 1 or groups > limit:
        return None
    return weight


def _index(model: onnx.ModelProto) -> tuple[dict[str, onnx.TensorProto], dict[str, int]]:
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    return inits, uses


def count_depthwise(model: onnx.ModelProto, *, max_channels: int = 1024) -> int:
    """How many convolutions ``densify_depthwise`` would rewrite (reads shapes only, so a model
    loaded without its external data will do)."""
    inits, uses = _index(model)
    return sum(
        _depthwise_weight(n, inits, uses, max_channels) is not None for n in model.graph.node
    )


def rewrite_file(
    src: Path, out: Path, rewrite: Callable[[onnx.ModelProto], int], what: str
) -> Path:
    """A compiler pass made of an in-place ``rewrite`` (returning how many nodes it changed):
    ``src`` rewritten and checked into ``out``; a graph with nothing to rewrite is an error (the
    compiler only asks for graphs that have ``what``)."""
    model = onnx.load(str(src))
    if not rewrite(model):
        raise ValueError(f"{src.name} has no {what} to rewrite")
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(out))
    return out


def densify_file(src: Path, out: Path) -> Path:
    """The compiler pass: ``src`` with its depthwise convolutions made dense, into ``out``."""
    return rewrite_file(src, out, densify_depthwise, "depthwise convolution")


def densify_depthwise(model: onnx.ModelProto, *, max_channels: int = 1024) -> int:
    """Rewrite, in place, every depthwise ``Conv`` of ``model`` whose weight is an initializer.

    Depthwise = ``group`` equal to the output channels with one input channel per group (channel
    multiplier 1). ``max_channels`` bounds the dense weight (C x C x kh x kw). Returns how many
    convolutions were rewritten.
    """
    inits, uses = _index(model)
    rewritten = 0
    for node in model.graph.node:
        weight = _depthwise_weight(node, inits, uses, max_channels)
        if weight is None:
            continue
        groups = _group(node)
        w = numpy_helper.to_array(weight)
        dense = np.zeros((groups, groups, *w.shape[2:]), dtype=w.dtype)
        idx = np.arange(groups)
        dense[idx, idx] = w[:, 0]
        weight.CopyFrom(numpy_helper.from_array(dense, weight.name))
        kept = [a for a in node.attribute if a.name != "group"]
        del node.attribute[:]
        node.attribute.extend([*kept, helper.make_attribute("group", 1)])
        rewritten += 1
    return rewritten
