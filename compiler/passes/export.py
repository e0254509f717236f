"""Pass 1: trace an export wrapper to ONNX with the TorchScript exporter, then onnx.checker.

Why ``dynamo=False``: the wrappers are written for tracing (no data-dependent control flow), and
the TorchScript path gives stable node names and byte-identical files on rebuilds; the dynamo
exporter also needs onnxscript, which the runtime never should.

Why the output shapes are rewritten: the exporter's shape inference names every output dimension
it cannot prove static (``Convhigh_res_feat_s0_dim_2``), and gives unrelated outputs the same
name, which would tell the runtime and ``bundle.yaml`` readers that a 128x128 and a 256x256 map
share a size. Only the batch/objects axis of an output really varies, so outputs get the traced
sizes everywhere else.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from samurai_onnx.runtime.bundle import GRAPH_IO


def export_graph(
    wrapper: nn.Module,
    graph: str,
    inputs: dict[str, torch.Tensor],
    dynamic_axes: dict[str, dict[int, str]],
    out: Path,
    *,
    opset: int,
    output_shapes: dict[str, tuple[int, ...]] | None = None,
) -> Path:
    """Export ``wrapper`` with the I/O names of ``GRAPH_IO[graph]`` and check the result.

    ``output_shapes`` (the traced outputs' sizes) replace the exporter's guessed output
    dimensions, except the axes named in ``dynamic_axes``.
    """
    names = GRAPH_IO[graph]
    args = tuple(inputs[n] for n in names["inputs"])
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-derived Python ints
        torch.onnx.export(
            wrapper,
            args,
            str(out),
            input_names=list(names["inputs"]),
            output_names=list(names["outputs"]),
            dynamic_axes=dynamic_axes or None,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
            # the fused attention lowering emits com.microsoft.MultiHeadAttention
            custom_opsets={"com.microsoft": 1} if _uses_contrib_ops(wrapper) else None,
        )
    if output_shapes:
        _set_output_shapes(out, output_shapes, dynamic_axes)
    onnx.checker.check_model(str(out), full_check=True)
    return out


def _set_output_shapes(
    path: Path, shapes: dict[str, tuple[int, ...]], dynamic_axes: dict[str, dict[int, str]]
) -> None:
    model = onnx.load(str(path))
    for value in model.graph.output:
        if value.name not in shapes:
            continue
        named = dynamic_axes.get(value.name, {})
        dims = value.type.tensor_type.shape.dim
        del dims[:]
        for i, size in enumerate(shapes[value.name]):
            dim = dims.add()
            if i in named:
                dim.dim_param = named[i]
            else:
                dim.dim_value = int(size)
    onnx.save(model, str(path))


def _uses_contrib_ops(wrapper: nn.Module) -> bool:
    return any(getattr(m, "lowering", None) == "ort_mha" for m in wrapper.modules())
