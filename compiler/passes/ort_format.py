"""Pass 5 (mobile): save the graph in ORT format (.ort), the format ORT Mobile loads.

Only basic (provider-independent) graph optimizations are baked in, so the file stays valid on
ARM phones; the layout transforms of ORT's x86 CPU kernels are left to load time. int8 weights
are stored as uint8 first (``quantize.weights_as_uint8``): exact on every CPU, where ONNX
Runtime's own load-time rewrite does not reach ORT-format files.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

from samurai_onnx.compiler.passes.quantize import weights_as_uint8


def convert_to_ort(src: Path, out: Path) -> Path:
    model = onnx.load(str(src))
    if weights_as_uint8(model):
        src = out.with_name(out.stem + ".uint8.onnx")
        onnx.save(model, str(src))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(out)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    return out
