"""Pass 5 (mobile): save the graph in ORT format (.ort), the format ORT Mobile loads.

Only basic (provider-independent) graph optimizations are baked in, so the file stays valid on
ARM phones; the layout transforms of ORT's x86 CPU kernels are left to load time.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort


def convert_to_ort(src: Path, out: Path) -> Path:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(out)
    opts.add_session_config_entry("session.save_model_format", "ORT")
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    return out
