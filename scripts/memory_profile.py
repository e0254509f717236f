"""Peak memory of the tracker over long videos: does it stay flat as the video gets longer?

    python scripts/memory_profile.py BUNDLE --frames 60 --frames 240 [--objects 1] [--size 64x48]
    python scripts/memory_profile.py BUNDLE --frames 2000 --window 500   # the README's long run

Each length runs in a fresh interpreter (so that ``ru_maxrss``, the peak resident set size, is
that run's own) on a synthetic video generated frame by frame (never stored), tracked with
``Tracker.track`` from an iterator. The child reports its peak RSS after the sessions are created,
after the first frame and at the end, plus the current RSS (VmRSS) at checkpoints. A bounded
memory bank means the peak after N and after 4N frames differ by noise only. ``--window N``
also samples the RSS after every frame and compares its mean over the first N frames with its
mean over the last N (flat: within a few percent).

``--child`` (used by the parent and by tests/test_memory_bank.py) runs one length and prints one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np


def _peak_mb() -> float:
    """Peak RSS of this process so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_mb() -> float:
    """Current RSS (VmRSS) of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def synthetic_video(n: int, width: int, height: int) -> Iterator[np.ndarray]:
    """A bright rectangle and a disc drifting over a textured background, one frame at a time."""
    import cv2

    rng = np.random.default_rng(0)
    background = rng.integers(0, 60, (height, width, 3), np.uint8)
    for i in range(n):
        frame = background.copy()
        x = int((0.2 + 0.3 * np.sin(i / 25.0) + 0.3) * width) % max(width - width // 4, 1)
        y = int(height * (0.3 + 0.1 * np.cos(i / 40.0)))
        cv2.rectangle(frame, (x, y), (x + width // 4, y + height // 4), (250, 250, 250), -1)
        cx = int(width * (0.7 - 0.2 * np.sin(i / 30.0)))
        cv2.circle(frame, (cx, int(height * 0.7)), max(height // 8, 2), (60, 60, 250), -1)
        yield frame


# SAMURAI's memory-bank criteria relaxed so that every frame from 2 on is "valid": the valid ring
# is always full (6 memories + the conditioning frame attended to), the worst case for memory.
ALL_VALID = {
    "memory_bank_iou_threshold": -1.0,
    "memory_bank_obj_score_threshold": -1e9,
    "memory_bank_kf_score_threshold": -1.0,  # below any Kalman IoU (range: -1..1)
}


def child(
    bundle: str,
    frames: int,
    objects: int,
    size: tuple[int, int],
    checkpoints: list[int],
    all_valid: bool = False,
    window: int = 0,
) -> dict[str, object]:
    from samurai_onnx.runtime import Tracker

    width, height = size
    start_mb = _peak_mb()
    tracker = Tracker(bundle, device="cpu", overrides=ALL_VALID if all_valid else None)
    after_sessions = _peak_mb()
    shapes = [
        (0.2 * width, 0.3 * height, width / 4, height / 4),
        (0.6 * width, 0.6 * height, height / 4, height / 4),
    ]
    boxes = [shapes[k % 2] for k in range(objects)]
    marks: dict[int, dict[str, float]] = {}
    series: list[float] = []
    after_first = 0.0
    t0 = time.perf_counter()
    count = 0
    for result in tracker.track(synthetic_video(frames, width, height), boxes):
        count = result.index + 1
        if count == 1:
            after_first = _peak_mb()
        if count in checkpoints:
            marks[count] = {"peak_mb": _peak_mb(), "rss_mb": _current_mb()}
        if window:
            series.append(_current_mb())
    seconds = time.perf_counter() - t0
    bank = tracker.states[0].memory
    windows: dict[str, object] = {}
    if window and len(series) >= 2 * window:
        first, last = series[:window], series[-window:]
        mean_first, mean_last = sum(first) / window, sum(last) / window
        windows = {
            "window": window,
            "rss_mb_first_window_mean": round(mean_first, 1),
            "rss_mb_last_window_mean": round(mean_last, 1),
            "rss_mb_first_window_max": round(max(first), 1),
            "rss_mb_last_window_max": round(max(last), 1),
            "rss_window_change_pct": round(100.0 * (mean_last - mean_first) / mean_first, 2),
        }
    return {
        "frames": count,
        "objects": objects,
        "size": f"{width}x{height}",
        "all_valid": all_valid,
        "seconds": round(seconds, 1),
        "s_per_frame": round(seconds / max(count, 1), 2),
        "peak_mb_start": round(start_mb, 1),
        "peak_mb_after_sessions": round(after_sessions, 1),
        "peak_mb_after_frame0": round(after_first, 1),
        "peak_mb_end": round(_peak_mb(), 1),
        "rss_mb_end": round(_current_mb(), 1),
        "checkpoints": {str(k): {kk: round(v, 1) for kk, v in d.items()} for k, d in marks.items()},
        "bank": {
            "valid": len(bank.valid),
            "pointers": len(bank.pointer_ring),
            "last": bank.last.frame if bank.last else None,
        },
        "torch_imported": "torch" in sys.modules,
        **windows,
    }


def run_child(
    bundle: str,
    frames: int,
    objects: int,
    size: str,
    checkpoints: list[int] | None = None,
    all_valid: bool = False,
    window: int = 0,
) -> dict[str, object]:
    """One length in a fresh interpreter; returns the child's JSON report."""
    cmd = [
        sys.executable, __file__, bundle, "--child", "--frames", str(frames),
        "--objects", str(objects), "--size", size,
    ]  # fmt: skip
    if checkpoints:
        cmd += ["--checkpoints", ",".join(map(str, checkpoints))]
    if all_valid:
        cmd.append("--all-valid")
    if window:
        cmd += ["--window", str(window)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}):\n{proc.stderr}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="bundle directory (e.g. a tiny cpu bundle)")
    parser.add_argument(
        "--frames", type=int, action="append", help="video length(s); default 60 and 240"
    )
    parser.add_argument("--objects", type=int, default=1, help="objects tracked (default 1)")
    parser.add_argument("--size", default="64x48", help="frame size WxH (default 64x48)")
    parser.add_argument("--checkpoints", default="", help="frame counts to sample RSS at")
    parser.add_argument(
        "--all-valid",
        action="store_true",
        help="relax SAMURAI's memory-bank criteria so that every frame is a valid memory (the "
        "bank stays full: the worst case)",
    )
    parser.add_argument(
        "--window",
        type=int,
        default=0,
        help="sample the RSS after every frame and compare the mean of the first and last N "
        "frames (needs at least 2N frames)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the reports to this file")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    lengths = args.frames or [60, 240]
    if args.child:
        marks = [int(v) for v in args.checkpoints.split(",") if v.strip()]
        report = child(
            args.bundle,
            lengths[0],
            args.objects,
            (width, height),
            marks,
            args.all_valid,
            args.window,
        )
        print(json.dumps(report))
        return 0
    reports = []
    for n in lengths:
        marks = sorted({1, *range(0, n + 1, max(n // 6, 1))} - {0} | {n})
        report = run_child(
            args.bundle, n, args.objects, args.size, marks, args.all_valid, args.window
        )
        reports.append(report)
        print(json.dumps(report), flush=True)
    print()
    print(
        f"{'frames':>7} {'s/frame':>8} {'peak MB':>8} {'after f0':>9} {'end RSS':>8}  RSS at checkpoints"
    )
    for r in reports:
        cps = r["checkpoints"]
        assert isinstance(cps, dict)
        series = " ".join(f"{k}:{v['rss_mb']:.0f}" for k, v in cps.items())
        print(
            f"{r['frames']:>7} {r['s_per_frame']:>8} {r['peak_mb_end']:>8} "
            f"{r['peak_mb_after_frame0']:>9} {r['rss_mb_end']:>8}  {series}"
        )
    if len(reports) >= 2:
        first, last = reports[0], reports[-1]
        growth = float(last["peak_mb_end"]) - float(first["peak_mb_end"])  # type: ignore[arg-type]
        print(
            f"peak RSS growth from {first['frames']} to {last['frames']} frames: {growth:+.1f} MB"
        )
    for r in reports:
        if "rss_window_change_pct" in r:
            print(
                f"{r['frames']} frames: mean RSS over the first {r['window']} frames "
                f"{r['rss_mb_first_window_mean']} MB, over the last {r['window']} "
                f"{r['rss_mb_last_window_mean']} MB ({float(r['rss_window_change_pct']):+.2f}%)"  # type: ignore[arg-type]
            )
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
