"""Track an object through a video with a SAMURAI ONNX bundle (the user guide's interface).

    python scripts/onnx_inference.py --video_path dog.mp4 --bbox 450,380,250,165 \\
        --model_dir bundles/base_plus-cpu --device cpu --output_video dog_tracked.mp4

A thin layer over ``samurai-run`` (``samurai_onnx.runtime.cli.execute``): same loop, same outputs,
same one-line errors with exit code 2. The user guide's Python API is importable from here too
(from the repository root)::

    from scripts.onnx_inference import SAMURAIONNXPredictor

    predictor = SAMURAIONNXPredictor("bundles/base_plus-cpu", device="cpu")
    for result in predictor.track_video("dog.mp4", (450, 380, 250, 165)):
        print(result.index, result.objects[0].box)
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from samurai_onnx.runtime.cli import default_boxes_path, execute
from samurai_onnx.runtime.tracker import SAMURAIONNXPredictor

__all__ = ["SAMURAIONNXPredictor", "build_parser", "main"]

DESCRIPTION = """\
Track the object in --bbox through --video_path with the ONNX bundle in --model_dir.

Writes:
  * boxes: one LaSOT-style x,y,w,h line per frame (pixels; 0,0,0,0 when the object is absent)
    to --output_boxes, by default <video stem>_boxes.txt in the current folder; with several
    --bbox, one file per object: <stem>_obj<k><suffix>;
  * with --output_video: an MP4 of the frames with the masks and boxes drawn.
A run that fails or is interrupted midway (Ctrl-C, SIGTERM) keeps every frame tracked before it
in both files; a run refused for bad input changes no file.
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, like the tracking errors (argparse prints the whole usage)."""
        self.exit(2, f"error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="onnx_inference.py",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--video_path",
        required=True,
        help="video file (.mp4 .avi .mov .mkv .webm), folder of .jpg/.png frames, or webcam index",
    )
    parser.add_argument(
        "--bbox",
        required=True,
        action="append",
        metavar="X,Y,W,H",
        help="first-frame box in pixels (top-left corner, width, height); repeat for several "
        "objects",
    )
    parser.add_argument(
        "--model_dir", required=True, help="bundle directory made by samurai-compile"
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda", "tensorrt"),
        help="execution provider (default: cpu); a missing one falls back to the CPU with a "
        "warning",
    )
    parser.add_argument(
        "--output_video", default=None, help="write an MP4 with masks and boxes drawn"
    )
    parser.add_argument(
        "--output_boxes",
        default=None,
        help="box file (default: <video stem>_boxes.txt in the current folder)",
    )
    parser.add_argument("--max_frames", type=int, default=None, help="stop after this many frames")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar on stderr")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return execute(
        args.model_dir,
        args.video_path,
        args.bbox,
        device=args.device,
        output_video=args.output_video,
        boxes_out=args.output_boxes or default_boxes_path(args.video_path),
        max_frames=args.max_frames,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    sys.exit(main())
