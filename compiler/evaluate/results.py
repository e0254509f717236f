"""Result files in the toolkits' own layouts, written so that a crash never leaves half a file.

- LaSOT / OTB: ``<out>/<seq>.txt``, one ``x,y,w,h`` line per frame (SAMURAI's ``results/``
  folder, pytracking's layout), and ``<out>/<seq>_time.txt`` with seconds per frame;
- GOT-10k: ``<out>/<seq>/<seq>_001.txt`` and ``<out>/<seq>/<seq>_time.txt`` (the toolkit's
  layout for a deterministic tracker, which needs one repetition only).

A box file is complete when it has one valid line per frame; anything else (missing, truncated,
unreadable) is tracked again by ``samurai-eval run``. Files are written to a temporary name in
the same folder and renamed, so a box file, once it has its name, is whole.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Callable
from collections.abc import Sequence as Seq
from pathlib import Path

import numpy as np

from samurai_onnx.compiler.evaluate.datasets import DatasetError, read_boxes, read_text

log = logging.getLogger(__name__)


def result_paths(fmt: str, out_dir: Path, name: str) -> tuple[Path, Path]:
    """(box file, time file) of sequence ``name`` for dataset format ``fmt``."""
    if fmt == "got10k":
        return out_dir / name / f"{name}_001.txt", out_dir / name / f"{name}_time.txt"
    return out_dir / f"{name}.txt", out_dir / f"{name}_time.txt"


def replace_from(path: Path, write: Callable[[Path], object]) -> None:
    """Have ``write`` fill a temporary file beside ``path``, then rename it to ``path``.

    A local helper until ``runtime/video.py`` offers one: readers see the old file, no file, or
    the whole new file, never a prefix; a failure removes the temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # a fresh name that ``write`` creates itself, so the file gets the usual (umask) permissions
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_atomic(path: Path, text: str) -> None:
    """``path.write_text(text)``, atomically (see :func:`replace_from`)."""
    replace_from(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def format_boxes(boxes: Seq[Seq[float]]) -> str:
    """``x,y,w,h`` lines; integers as integers (what SAMURAI writes), others with 4 decimals."""

    def fmt(v: float) -> str:
        return str(int(v)) if float(v).is_integer() else f"{float(v):.4f}"

    return "".join(",".join(fmt(v) for v in box) + "\n" for box in boxes)


def write_result(
    fmt: str, out_dir: Path, name: str, boxes: Seq[Seq[float]], times: Seq[float]
) -> Path:
    """Write one sequence's boxes and per-frame seconds; the box file goes last, so that its
    presence means the sequence is done."""
    box_path, time_path = result_paths(fmt, out_dir, name)
    write_atomic(time_path, "".join(f"{t:.6f}\n" for t in times))
    write_atomic(box_path, format_boxes(boxes))
    return box_path


def read_result(path: Path, num_frames: int) -> np.ndarray:
    """A result file as ``[num_frames, 4]``; a one-line error for a missing, malformed or
    incomplete file."""
    if not path.is_file():
        raise DatasetError(f"{path}: result file is missing; run samurai-eval run first")
    boxes = read_boxes(path, "result", allow_negative=False)
    if len(boxes) != num_frames:
        raise DatasetError(
            f"{path}: {len(boxes)} boxes for {num_frames} frames; an incomplete result "
            "(samurai-eval run tracks it again)"
        )
    return boxes


def is_complete(path: Path, num_frames: int) -> bool:
    """True when ``path`` holds one valid box per frame (a finished sequence to skip)."""
    if not path.exists():
        return False
    try:
        read_result(path, num_frames)
    except DatasetError as e:
        log.warning("%s; tracking it again", e)
        return False
    return True


def read_times(path: Path) -> np.ndarray | None:
    """Seconds per frame from a time file, None (with a warning) when absent or unreadable:
    timing is reported, never needed for a score."""
    if not path.is_file():
        return None
    try:
        values = [float(t) for t in read_text(path, "time file") if t.strip()]
    except (DatasetError, ValueError) as e:
        log.warning("%s: timing ignored (%s)", path, e)
        return None
    times = np.asarray(values, np.float64)
    times = times[np.isfinite(times) & (times > 0)]
    return times if times.size else None
