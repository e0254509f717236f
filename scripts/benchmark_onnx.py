"""The user guide's benchmark script: a thin layer over ``samurai-bench``.

    python scripts/benchmark_onnx.py --model_dir bundles/tiny-cpu --device cpu --batch_sizes 1,4,8

Prints a Markdown table (ONNX Runtime vs the PyTorch reference, per component and end to end);
``--json F`` also writes JSON. Without the reference checkpoint or oracle, pass --no_reference.
"""

from __future__ import annotations

import argparse
import sys

from samurai_onnx.compiler.evaluate.bench_cli import app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model_dir", required=True, help="bundle directory")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "tensorrt"])
    parser.add_argument("--batch_sizes", default="1", help="e.g. 1,4,8")
    parser.add_argument("--checkpoint", help="the .pt the bundle was built from (reference side)")
    parser.add_argument("--video", help="clip for the end-to-end timing (default: synthetic)")
    parser.add_argument("--bbox", default="100,120,90,70")
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--json", help="write the report as JSON")
    parser.add_argument("--markdown", help="write the report as Markdown")
    parser.add_argument("--no_reference", action="store_true", help="skip the PyTorch reference")
    args = parser.parse_args(argv)
    cli = [
        args.model_dir,
        "--device",
        args.device,
        "--batch-sizes",
        args.batch_sizes,
        "--bbox",
        args.bbox,
        "--frames",
        str(args.frames),
    ]
    for flag, value in (
        ("--checkpoint", args.checkpoint),
        ("--video", args.video),
        ("--json", args.json),
        ("--markdown", args.markdown),
    ):
        if value:
            cli += [flag, value]
    if args.no_reference:
        cli.append("--no-reference")
    try:
        app(cli, prog_name="benchmark_onnx.py")  # standalone mode: always ends in SystemExit
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
