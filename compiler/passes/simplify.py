"""Pass 2: onnxsim (constant folding, dead-node removal, shape inference), then onnx.checker."""

from __future__ import annotations

from pathlib import Path

import onnx


def simplify_graph(src: Path, out: Path) -> Path:
    """Simplify ``src`` into ``out``; fails loudly if onnxsim cannot prove the result equal."""
    import onnxsim

    model = onnx.load(str(src))
    simplified, ok = onnxsim.simplify(model)
    if not ok:
        raise RuntimeError(f"onnxsim could not validate the simplified {src.name}")
    onnx.checker.check_model(simplified, full_check=True)
    onnx.save(simplified, str(out))
    return out
