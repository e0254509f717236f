"""Pass 1: trace an export wrapper to ONNX with the TorchScript exporter, then onnx.checker.

Why ``dynamo=False``: the wrappers are written for tracing (no data-dependent control flow), and
the TorchScript path gives stable node names and byte-identical files on rebuilds; the dynamo
exporter also needs onnxscript, which the runtime never should.

Why the output shapes are rewritten: the exporter's shape inference names every output dimension
it cannot prove static (``Convhigh_res_feat_s0_dim_2``), and gives unrelated outputs the same
name, which would tell the runtime and ``bundle.yaml`` readers that a 128x128 and a 256x256 map
share a size. The contract knows which axes vary; outputs get its shapes.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from samurai_onnx.compiler.modeling.common import INT8_LOWERING
from samurai_onnx.runtime.contract import GraphContract


def export_graph(
    wrapper: nn.Module,
    graph: GraphContract,
    inputs: dict[str, torch.Tensor],
    out: Path,
    *,
    opset: int,
) -> Path:
    """Export ``wrapper`` with the I/O names and axes of the graph's contract and check it.

    The exporter's guessed output dimensions are replaced by the contract's shapes.
    """
    args = tuple(inputs[n] for n in graph.input_names)
    axes = graph.dynamic_axes()
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-derived Python ints
        torch.onnx.export(
            wrapper,
            args,
            str(out),
            input_names=list(graph.input_names),
            output_names=list(graph.output_names),
            dynamic_axes=axes or None,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
            # fused attention emits com.microsoft.MultiHeadAttention, int8 MatMulIntegerToFloat
            custom_opsets={"com.microsoft": 1} if _uses_contrib_ops(wrapper) else None,
        )
    _set_output_shapes(out, graph)
    onnx.checker.check_model(str(out), full_check=True)
    return out


def _set_output_shapes(path: Path, graph: GraphContract) -> None:
    model = onnx.load(str(path))
    for value in model.graph.output:
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for size in graph.output(value.name).shape:
            dim = dims.add()
            if isinstance(size, str):
                dim.dim_param = size
            else:
                dim.dim_value = int(size)
    onnx.save(model, str(path))


def _uses_contrib_ops(wrapper: nn.Module) -> bool:
    """MultiHeadAttention (``ort_mha``) and MatMulIntegerToFloat (``int8``) are contrib ops."""
    return any(getattr(m, "lowering", None) in ("ort_mha", INT8_LOWERING) for m in wrapper.modules())
