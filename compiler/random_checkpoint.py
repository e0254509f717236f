"""Make a seeded random-weight SAM 2.1 checkpoint in the official file format.

Why: the official checkpoints cannot always be downloaded (offline machines, CI). A random
checkpoint with the official keys, shapes and file layout exercises every code path of the
compiler and runtime; its tracks are meaningless. Weights are fan-in scaled (see
``checkpoint.randomize_state_dict``) so that masks are neither empty nor full.

    python -m samurai_onnx.compiler.random_checkpoint --model tiny --out checkpoints/random-tiny.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from samurai_onnx.compiler.checkpoint import randomize_state_dict, save_official_format
from samurai_onnx.compiler.manifest import ManifestError, load_model_manifest
from samurai_onnx.compiler.modeling.sam2 import build_sam2


def make_random_checkpoint(manifest: str | Path, out: Path, *, seed: int = 0) -> Path:
    """Random weights for the model of ``manifest`` (a path or a size name), saved at ``out``."""
    cfg = load_model_manifest(manifest).model
    torch.manual_seed(seed)
    template = build_sam2(cfg).state_dict()
    return save_official_format(randomize_state_dict(template, seed=seed), out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="tiny", help="size name (tiny, small, base_plus, large) or manifest path"
    )
    parser.add_argument("--out", type=Path, required=True, help="where to write the .pt file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        path = make_random_checkpoint(args.model, args.out, seed=args.seed)
    except (ManifestError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"random-weight checkpoint written to {path} (for testing only: its tracks are meaningless)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
