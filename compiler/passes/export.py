"""Pass 1: trace an export wrapper to ONNX with the TorchScript exporter, then onnx.checker.

Why ``dynamo=False``: the wrappers are written for tracing (no data-dependent control flow), and
the TorchScript path gives stable node names and byte-identical files on rebuilds; the dynamo
exporter also needs onnxscript, which the runtime never should.
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
) -> Path:
    """Export ``wrapper`` with the I/O names of ``GRAPH_IO[graph]`` and check the result."""
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
            custom_opsets={"com.microsoft": 1},
        )
    onnx.checker.check_model(str(out), full_check=True)
    return out
