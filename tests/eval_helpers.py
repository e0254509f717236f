"""Builders of mini benchmark datasets on disk, in each toolkit's layout, for the samurai-eval
tests (the project ships no benchmark data; every test makes its own)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

Box = Sequence[float]


def write_jpegs(folder: Path, frames: Sequence[np.ndarray], digits: int = 8) -> list[Path]:
    """RGB frames -> ``00000001.jpg``... (1-based, as the benchmarks number them)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        path = folder / f"{i + 1:0{digits}d}.jpg"
        cv2.imwrite(str(path), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths


def blank_frames(n: int, w: int = 16, h: int = 12) -> list[np.ndarray]:
    """Frames whose pixels do not matter (metric and reader tests)."""
    return [np.full((h, w, 3), 40 * (i % 5), np.uint8) for i in range(n)]


def box_lines(boxes: Sequence[Box], sep: str = ",") -> str:
    return "".join(sep.join(f"{v:g}" for v in b) + "\n" for b in boxes)


def make_lasot_sequence(
    root: Path,
    name: str,
    frames: Sequence[np.ndarray],
    gt: Sequence[Box],
    absent: Sequence[int] | None = None,
    nested: bool = True,
) -> Path:
    """``<root>/<class>/<name>/`` (or flat ``<root>/<name>/``) with img/, ground truth, labels;
    ``absent`` frames are marked fully occluded (odd indices) or out of view (even ones)."""
    seq = root / name.rsplit("-", 1)[0] / name if nested else root / name
    write_jpegs(seq / "img", frames)
    (seq / "groundtruth.txt").write_text(box_lines(gt))
    flags = list(absent or [0] * len(frames))
    occlusion = [f if i % 2 else 0 for i, f in enumerate(flags)]
    out_of_view = [0 if i % 2 else f for i, f in enumerate(flags)]
    (seq / "full_occlusion.txt").write_text(",".join(map(str, occlusion)) + "\n")
    (seq / "out_of_view.txt").write_text(",".join(map(str, out_of_view)) + "\n")
    return seq


def make_got10k_sequence(
    subset: Path,
    name: str,
    frames: Sequence[np.ndarray],
    gt: Sequence[Box],
    cover: Sequence[int] | None = None,
    resolution: tuple[int, int] | None = None,
) -> Path:
    """``<subset>/<name>/`` with frames, ground truth, cover/absence/cut labels and
    meta_info.ini (as GOT-10k's train/val splits have them); appends ``name`` to list.txt."""
    seq = subset / name
    write_jpegs(seq, frames)
    (seq / "groundtruth.txt").write_text(box_lines(gt))
    covers = list(cover or [8] * len(gt))
    if len(gt) > 1:
        (seq / "cover.label").write_text("".join(f"{c}\n" for c in covers))
        (seq / "absence.label").write_text("".join(f"{int(c == 0)}\n" for c in covers))
        (seq / "cut_by_image.label").write_text("".join("0\n" for _ in covers))
    h, w = frames[0].shape[:2]
    res = resolution or (w, h)
    (seq / "meta_info.ini").write_text(
        f"[METAINFO]\nurl: none\nbegin_time: 0\nend_time: 1\nobject_class: test\n"
        f"motion_class: none\nmajor_class: none\nroot_class: none\nmotion_adverb: none\n"
        f"resolution: ({res[0]}, {res[1]})\n"
    )
    listing = subset / "list.txt"
    names = listing.read_text().split() if listing.exists() else []
    listing.write_text("\n".join([*names, name]) + "\n")
    return seq


def make_otb_sequence(
    root: Path, name: str, frames: Sequence[np.ndarray], gt: Sequence[Box], sep: str = ","
) -> Path:
    seq = root / name
    write_jpegs(seq / "img", frames, digits=4)
    (seq / "groundtruth_rect.txt").write_text(box_lines(gt, sep))
    return seq
