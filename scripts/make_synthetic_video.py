"""Write the project's synthetic clip (a white box and a disc moving on black) as an MP4.

python scripts/make_synthetic_video.py out.mp4 [--frames 20] [--width 480 --height 360]

Prints the white box's first-frame box (x,y,w,h) for --bbox.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2

from samurai_onnx.compiler.evaluate.synthetic import synthetic_box, synthetic_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--width", type=int, default=480)
    parser.add_argument("--height", type=int, default=360)
    args = parser.parse_args()
    if args.frames < 1 or args.width < 16 or args.height < 16:
        parser.error("--frames must be at least 1 and --width/--height at least 16")
    if args.out.resolve().exists() and args.out.is_dir():
        parser.error(f"{args.out} is a folder; give a file name ending in .mp4")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    size = (args.width, args.height)
    writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, size)
    for frame in synthetic_frames(args.frames, args.width, args.height):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    print(",".join(str(int(v)) for v in synthetic_box(args.width)))


if __name__ == "__main__":
    main()
