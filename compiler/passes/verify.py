"""The numeric check run after every pass: the graph's output on the target's engine vs PyTorch's.

A pass that breaks the numbers must fail the build with the component, the pass, the output and
the error; ``check_outputs`` raises ``NumericError`` saying exactly that. Graphs run where the
target's bundles will run: ONNX Runtime's CPU provider for ONNX Runtime targets, the target's
engine (e.g. OpenVINO, at the precision it picks on this machine) for the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from samurai_onnx.runtime.contract import GraphContract
from samurai_onnx.runtime.engine import Engine, EngineSettings, create_engine
from samurai_onnx.runtime.engine.onnxruntime import create_session

# Outputs derived by counting thresholded pixels: a logit that sits at 0 within rounding can move
# a box edge by a pixel or a stability ratio by one pixel's share, whatever the precision.
DISCRETE_FLOORS = {"mask_boxes": 2.0, "stability_score": 0.02, "video_boxes": 1.0}


class NumericError(RuntimeError):
    """A compiled graph whose outputs differ from PyTorch beyond the declared tolerance."""


def check_engine(engine: str, options: dict[str, Any]) -> Engine | None:
    """The engine a target's graphs are checked on; None for ONNX Runtime (raw CPU sessions,
    whose errors the build reports as they are).

    No compiled-model cache: the files checked are the build's intermediate ones.
    """
    if engine == "onnxruntime":
        return None
    return create_engine(EngineSettings(engine=engine, options={**options, "cache_dir": None}))


def declared_precision(engine: str, options: dict[str, Any], file_precision: str) -> str:
    """The loosest precision a target's fp32 graphs may run at on any machine (its tolerance is
    what the bundle records): bf16 for OpenVINO unless its precision option is f32."""
    if engine == "openvino" and file_precision == "fp32":
        return "fp32" if options.get("precision", "auto") == "f32" else "bf16"
    return file_precision


def run_graph(
    path: Path,
    inputs: dict[str, torch.Tensor] | dict[str, np.ndarray],
    engine: Engine | None = None,
    graph: GraphContract | None = None,
) -> dict[str, np.ndarray]:
    """Every output of the graph at ``path`` on ``inputs``: on ONNX Runtime's CPU provider, or
    on ``engine`` (which needs the graph's contract)."""
    feeds = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    if engine is not None:
        if graph is None:
            raise ValueError("run_graph on an engine needs the graph's contract")
        out = engine.load(path, graph).run({n: feeds[n] for n in graph.input_names})
        return {k: np.array(engine.download(v)) for k, v in out.items()}
    session = create_session(path, ("CPUExecutionProvider",))
    feed = {i.name: feeds[i.name] for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


# Outputs rounded to bfloat16 inside the graph (the memory pools, as the oracle stores memories):
# a pre-rounding difference of 1e-7 can move a value to the next bfloat16, so their error is what
# exceeds one bfloat16 step of the reference value.
BF16_OUTPUTS = ("memory_pool_out",)


def bf16_step(x: np.ndarray) -> np.ndarray:
    """The spacing of bfloat16 numbers at ``|x|`` (8 significant bits)."""
    _, exponent = np.frexp(np.abs(x).astype(np.float32))
    return np.ldexp(np.float32(1.0), exponent - 8).astype(np.float32)


def max_abs_errors(got: dict[str, np.ndarray], want: dict[str, torch.Tensor]) -> dict[str, float]:
    errors = {}
    for name, ref in want.items():
        ref_np = ref.detach().to(torch.float32).numpy()
        out = got[name].astype(np.float32)
        if out.shape != ref_np.shape:
            raise NumericError(f"output {name}: shape {out.shape} != PyTorch's {ref_np.shape}")
        diff = np.abs(out - ref_np)
        if name in BF16_OUTPUTS:
            diff = np.maximum(diff - bf16_step(ref_np), 0.0)
        errors[name] = float(np.max(diff)) if out.size else 0.0
    return errors


def check_outputs(
    component: str, pass_name: str, errors: dict[str, float], tolerance: float, where: str
) -> None:
    for name, err in errors.items():
        limit = max(tolerance, DISCRETE_FLOORS.get(name, 0.0))
        if not np.isfinite(err) or err > limit:
            raise NumericError(
                f"{component}: pass '{pass_name}' broke the numbers: output {name} differs from "
                f"PyTorch by {err:.3g} (max abs), tolerance {limit:g} ({where})"
            )
