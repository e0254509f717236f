"""The user guide's validation script: a thin layer over ``samurai-validate``.

    python scripts/validate_onnx.py --pytorch_model configs/samurai/sam2.1_hiera_t.yaml \\
        --onnx_models bundles/tiny-cpu --test_video video.mp4 [--bbox x,y,w,h] [--checkpoint CKPT]

``--pytorch_model`` names the SAMURAI config (or a size: tiny, small, base_plus, large); it must
be the bundle's model. Without ``--bbox`` the box is the centre half of the first frame
(x = W/4, y = H/4, w = W/2, h = H/2, rounded), as the user guide's command has no box.
Exit code 0: within tolerances, 1: beyond, 2: bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from samurai_onnx.compiler.evaluate.oracle import ORACLE_CONFIGS
from samurai_onnx.compiler.evaluate.validate_cli import app


def size_of(config: str) -> str | None:
    for size, path in ORACLE_CONFIGS.items():
        if config in (size, path) or Path(config).name == Path(path).name:
            return size
    return None


def centre_half(width: int, height: int) -> str:
    """The documented default box: the centre half of a ``width`` x ``height`` frame."""
    return f"{round(width / 4)},{round(height / 4)},{round(width / 2)},{round(height / 2)}"


def default_box(video: str) -> str | None:
    """``centre_half`` of ``video``'s first frame (said on stderr); None after printing an
    ``error:`` line when the video cannot be read."""
    from samurai_onnx.runtime.documents import one_line
    from samurai_onnx.runtime.video import VideoError, open_frames

    try:
        with open_frames(video) as source:
            size = source.size
            if size is None:
                first = next(iter(source))
                size = (int(first.shape[1]), int(first.shape[0]))
    except VideoError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return None
    box = centre_half(*size)
    print(f"no --bbox given: using the centre half of the first frame, {box}", file=sys.stderr)
    return box


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pytorch_model", required=True, help="SAMURAI config path or size name")
    parser.add_argument("--onnx_models", required=True, help="bundle directory")
    parser.add_argument("--test_video", required=True, help="video file or frame folder")
    parser.add_argument(
        "--bbox",
        help="first-frame box x,y,w,h (default: the centre half of the first frame, "
        "W/4,H/4,W/2,H/2)",
    )
    parser.add_argument("--checkpoint", help="the .pt the bundle was built from")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--json", help="write the report as JSON")
    args = parser.parse_args(argv)
    size = size_of(args.pytorch_model)
    if size is None:
        print(
            f"error: unknown --pytorch_model {args.pytorch_model!r}; use one of {', '.join(ORACLE_CONFIGS.values())}",
            file=sys.stderr,
        )
        return 2
    from samurai_onnx.runtime.bundle import BundleError, load_bundle

    try:
        model_name = load_bundle(args.onnx_models, verify_hashes=False).model_name
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if model_name != size:
        print(
            f"error: {args.onnx_models} holds SAM 2.1 {model_name}, not {size}; pass the matching --pytorch_model",
            file=sys.stderr,
        )
        return 2
    bbox = args.bbox or default_box(args.test_video)
    if bbox is None:
        return 2
    cli = [args.onnx_models, args.test_video, "--bbox", bbox, "--frames", str(args.frames)]
    if args.checkpoint:
        cli += ["--checkpoint", args.checkpoint]
    if args.json:
        cli += ["--json", args.json]
    try:
        app(cli, prog_name="validate_onnx.py")  # standalone mode: always ends in SystemExit
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
