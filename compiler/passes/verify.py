"""The numeric check run after every pass: ONNX Runtime output vs the PyTorch module's.

A pass that breaks the numbers must fail the build with the component, the pass, the output and
the error; ``check_outputs`` raises ``NumericError`` saying exactly that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from samurai_onnx.runtime.session import create_session

# Outputs derived by counting thresholded pixels: a logit that sits at 0 within rounding can move
# a box edge by a pixel or a stability ratio by one pixel's share, whatever the precision.
DISCRETE_FLOORS = {"mask_boxes": 2.0, "stability_score": 0.02}


class NumericError(RuntimeError):
    """A compiled graph whose outputs differ from PyTorch beyond the declared tolerance."""


def run_graph(path: Path, inputs: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    session = create_session(path, ("CPUExecutionProvider",))
    feed = {i.name: inputs[i.name].numpy() for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def max_abs_errors(got: dict[str, np.ndarray], want: dict[str, torch.Tensor]) -> dict[str, float]:
    errors = {}
    for name, ref in want.items():
        ref_np = ref.detach().to(torch.float32).numpy()
        out = got[name].astype(np.float32)
        if out.shape != ref_np.shape:
            raise NumericError(f"output {name}: shape {out.shape} != PyTorch's {ref_np.shape}")
        errors[name] = float(np.max(np.abs(out - ref_np))) if out.size else 0.0
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
