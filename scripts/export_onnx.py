#!/usr/bin/env python
"""Export SAMURAI (SAM 2.1) to ONNX: the user guide's command, a thin layer over the compiler.

    python scripts/export_onnx.py --components all --model_name base_plus --optimize
    python scripts/export_onnx.py --components image_encoder memory_encoder --model_name tiny \\
        --checkpoint sam2.1_hiera_tiny.pt --output_dir onnx_models

Builds the same verified bundle as ``samurai-compile`` (``compile_bundle``); the flags map onto it:
``--model_name`` picks the packaged ``manifests/<name>.yaml``, ``--optimize`` runs onnxsim (off by
default here, so the plain export is what you get), ``--dynamic_batch`` keeps the batch/objects
axis dynamic (otherwise it is fixed to 1), ``--target`` picks ``targets/<name>.yaml``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

MODEL_NAMES = ("tiny", "small", "base_plus", "large")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from samurai_onnx.runtime.bundle import COMPONENTS

    parser = argparse.ArgumentParser(
        prog="export_onnx.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--components",
        nargs="+",
        default=["all"],
        metavar="NAME",
        help=f"all (default) or some of {', '.join(COMPONENTS)} (space- or comma-separated)",
    )
    parser.add_argument(
        "--model_name", required=True, choices=MODEL_NAMES, help="SAM 2.1 size to export"
    )
    parser.add_argument(
        "--optimize", action="store_true", help="simplify the graphs with onnxsim (recommended)"
    )
    parser.add_argument(
        "--dynamic_batch",
        action="store_true",
        help="keep the batch/objects axis dynamic (default: fixed to 1)",
    )
    parser.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="official .pt file (default: the cache, else download it)",
    )
    parser.add_argument(
        "--output_dir",
        type=Path,
        default=None,
        help="bundle directory (default: bundles/<model>-<target>)",
    )
    parser.add_argument(
        "--target",
        default="cpu",
        help="target manifest: cpu, cpu-int8, cuda-fp16, tensorrt, ort-mobile, or a path",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    names = [n.strip() for v in args.components for n in v.split(",") if n.strip()]
    bad = [n for n in names if n != "all" and n not in COMPONENTS]
    if bad:
        parser.error(f"unknown component(s) {', '.join(bad)}; use all or {', '.join(COMPONENTS)}")
    args.components = (
        list(COMPONENTS) if not names or "all" in names else [c for c in COMPONENTS if c in names]
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(message)s",
    )
    from samurai_onnx.compiler.build import BuildError, BuildOptions, PassReport, compile_bundle
    from samurai_onnx.compiler.checkpoint import CheckpointError
    from samurai_onnx.compiler.manifest import ManifestError
    from samurai_onnx.compiler.passes.verify import NumericError
    from samurai_onnx.runtime.documents import one_line
    from samurai_onnx.runtime.signals import exit_code, handle_signals

    def show(r: PassReport) -> None:
        print(r.line(), flush=True)

    print(f"export {args.model_name} for {args.target}: {', '.join(args.components)}", flush=True)
    try:
        with handle_signals(deferred=False) as stop:
            out = compile_bundle(
                args.model_name,
                args.target,
                checkpoint=args.checkpoint,
                out_dir=args.output_dir,
                components=args.components,
                options=BuildOptions(simplify=args.optimize, dynamic_batch=args.dynamic_batch),
                on_pass=show,
                stop=stop,
            )
    except KeyboardInterrupt as exc:
        print("interrupted; nothing was written", file=sys.stderr)
        return exit_code(exc)
    except (ManifestError, CheckpointError, NumericError, BuildError, ValueError, OSError) as exc:
        logging.getLogger(__name__).debug("export failed", exc_info=True)
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
