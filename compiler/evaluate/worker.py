"""What one ``samurai-eval`` worker does: hold a tracker and track whole sequences with it.

The same class is a Ray actor's body (``ray_pool``) and the in-process worker of
``--backend local``, so both backends produce byte-identical result files; only the plain data
of :class:`Job` and :class:`Tracked` crosses process boundaries.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

PROGRESS_EVERY_S = 0.5


@dataclass(frozen=True)
class Job:
    """What a worker needs to track one sequence (no ground truth beyond the first box)."""

    name: str
    frames_dir: str
    box: tuple[float, float, float, float]
    num_frames: int
    attempt: int = 1


@dataclass
class Tracked:
    name: str
    attempt: int
    boxes: list[tuple[int, int, int, int]]
    times: list[float]
    worker: str = ""  # host:pid of the process that tracked it


def track_job(tracker: Any, job: Job, report: Callable[[int], None]) -> Tracked:
    """Track ``job`` from its first-frame box; ``report(n)`` is told of each finished frame.

    Boxes are what ``samurai-run --boxes-out`` writes: the mask's box, ``0,0,0,0`` when absent.
    """
    boxes: list[tuple[int, int, int, int]] = []
    times: list[float] = []
    start = time.perf_counter()
    for result in tracker.track(job.frames_dir, job.box):
        now = time.perf_counter()
        times.append(now - start)
        start = now
        obj = result.objects[0]
        box = obj.box if obj.present and obj.box is not None else (0, 0, 0, 0)
        boxes.append(tuple(int(v) for v in box))  # type: ignore[arg-type]
        report(1)
    if len(boxes) != job.num_frames:
        raise RuntimeError(f"{job.frames_dir}: tracked {len(boxes)} of {job.num_frames} frames")
    return Tracked(job.name, job.attempt, boxes, times)


class SequenceWorker:
    """One tracker for many sequences (the body of a Ray actor, or used in-process)."""

    def __init__(
        self, bundle: str, device: str | None, threads: int, queue: Any | None = None
    ) -> None:
        import cv2

        from samurai_onnx.runtime import Tracker

        cv2.setNumThreads(threads)
        self.tracker = Tracker(bundle, device=device, threads=threads)
        self.queue = queue

    def track(self, job: Job, progress: Callable[[int], None] | None = None) -> Tracked:
        """Track one sequence; progress goes to ``progress`` (in-process) or, every half second,
        to the Ray queue."""
        pending, last = 0, time.monotonic()

        def report(n: int) -> None:
            nonlocal pending, last
            if progress is not None:
                progress(n)
                return
            pending += n
            if self.queue is not None and time.monotonic() - last >= PROGRESS_EVERY_S:
                self.queue.put_nowait((job.name, job.attempt, pending))
                pending, last = 0, time.monotonic()

        tracked = track_job(self.tracker, job, report)
        tracked.worker = f"{socket.gethostname()}:{os.getpid()}"
        return tracked
