"""Make a small LaSOT-layout dataset from the shared clips, with SAMURAI's own PyTorch tracks
(the oracle) as the ground truth, for trying ``samurai-eval`` end to end.

    python scripts/make_eval_dataset.py OUT --bundle bundles/tiny-cpu --checkpoint ckpt.pt \\
        [--videos ../shared/videos] [--frames 10]

The clips have ground truth for the first frame only, so frames 2.. take the box of the mask that
SAMURAI's PyTorch code (pip package ``absolutely-not-samurai``, run on the same JPEG frames from
the same first-frame box and the same weights as the bundle) tracks; a frame where it tracks
nothing is marked fully occluded. Scoring the bundle's results against this dataset therefore
measures how closely the ONNX tracker follows the PyTorch one, not tracking quality. Needs the
``export`` extra (torch) and the oracle; ``samurai-eval`` itself needs neither.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import cv2

from samurai_onnx.compiler.evaluate.oracle import build_oracle, reference_checkpoint, run_oracle
from samurai_onnx.runtime.bundle import load_bundle
from samurai_onnx.runtime.preprocess import mask_to_box

# (clip, sequence name, first-frame box x,y,w,h) from ../shared/videos/README.md
SEQUENCES = [
    ("dog.mp4", "dog-1", (450, 380, 250, 165)),
    ("cups.mp4", "cup-1", (574, 294, 162, 246)),
    ("cups.mp4", "ball-1", (364, 424, 74, 76)),
]


def extract_frames(video: Path, folder: Path, count: int) -> int:
    """The clip's first ``count`` frames as ``img/00000001.jpg``...; returns how many."""
    folder.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(video))
    n = 0
    while n < count:
        ok, frame = cap.read()
        if not ok:
            break
        n += 1
        cv2.imwrite(str(folder / f"{n:08d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])
    cap.release()
    if n == 0:
        raise SystemExit(f"error: cannot read frames from {video}")
    return n


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("out", type=Path, help="dataset folder to create")
    parser.add_argument("--bundle", type=Path, required=True, help="the bundle to evaluate")
    parser.add_argument("--checkpoint", type=Path, help="the .pt the bundle was built from")
    parser.add_argument("--videos", type=Path, default=Path("../shared/videos"))
    parser.add_argument("--frames", type=int, default=10)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    bundle = load_bundle(args.bundle)
    checkpoint = reference_checkpoint(
        bundle.model_name, bundle.source_checkpoint_sha256, args.checkpoint
    )
    size = {"image_size": bundle.tracker.image_size}  # SAMURAI's code at the bundle's size
    oracle = build_oracle(bundle.model_name, checkpoint, size).eval()
    for clip, name, box in SEQUENCES:
        seq = args.out / name.rsplit("-", 1)[0] / name
        count = extract_frames(args.videos / clip, seq / "img", args.frames)
        boxes, absent = [box], [0]
        for frame in run_oracle(oracle, seq / "img", box):
            if frame.index == 0:
                continue
            found = mask_to_box(frame.mask)
            boxes.append(found or (0, 0, 0, 0))
            absent.append(int(found is None))
        assert len(boxes) == count, f"{name}: the oracle tracked {len(boxes)} of {count} frames"
        (seq / "groundtruth.txt").write_text("".join(",".join(map(str, b)) + "\n" for b in boxes))
        (seq / "full_occlusion.txt").write_text(",".join(map(str, absent)) + "\n")
        (seq / "out_of_view.txt").write_text(",".join("0" for _ in absent) + "\n")
        print(f"{seq}: {count} frames, {sum(absent)} with no oracle mask")


if __name__ == "__main__":
    main()
