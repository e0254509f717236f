"""Write a small synthetic MP4 (a white box and a disc moving on black) for demos and tests.

python scripts/make_synthetic_video.py out.mp4 [--frames 20]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--frames", type=int, default=20)
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(args.out), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (480, 360))
    for i in range(args.frames):
        f = np.zeros((360, 480, 3), np.uint8)
        x, y = 100 + 8 * i, 120 + 3 * i
        cv2.rectangle(f, (x, y), (x + 90, y + 70), (255, 255, 255), -1)
        cv2.circle(f, (330 - 5 * i, 250), 30, (255, 60, 60), -1)
        writer.write(f)
    writer.release()


if __name__ == "__main__":
    main()
