"""Encoding the next frame while this one is tracked (a target's ``prefetch``).

Why: SAM 2's image encoder depends on the frame alone, not on what is tracked, so the next
frame's features can be computed while the current frame's objects go through memory attention,
the mask decoder and the memory encoder. On a GPU those graphs are launch-bound at batch 1 and
leave the device mostly idle (an H200, ``cuda-fp16``: image encoder ~5.6 ms of a ~25 ms frame,
README "NVIDIA GPUs"), so the encoder running beside them, in its own thread with its own ONNX
Runtime session (and so its own CUDA stream), can hide most of its time: a frame then costs about
the larger of the two parts instead of their sum. ONNX Runtime releases the GIL while a graph
runs, so the two threads do run at once. On a CPU whose cores the graphs already use it only adds
contention, which is why it is a setting.

Exactness: the same graph runs on the same frame; only when it runs changes. Jobs are keyed by
the frame array's identity: ``take`` returns a job's result only for the very array it was given,
so a caller that steps another frame gets that frame encoded, never a stale one. Two jobs at
most: the frame about to be stepped (submitted one step earlier) and the one after it (submitted
just before that step, so that it runs while the step's other graphs do); one worker thread runs
them in order, and the caller runs the encoder itself only once no job is running, so the same
graphs never run in two threads at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np

log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_JOBS = 2  # the frame about to be stepped and the next one


@dataclass(frozen=True)
class _Job(Generic[T]):
    frame: np.ndarray  # matched by identity
    tag: Any
    future: Future[T]


class Ahead(Generic[T]):
    """``work(frame, tag)`` for frames given ahead, run in order by one background thread.

    ``tag`` is the caller's note on a job (the graphs: which output buffers it writes), kept
    with it so that the caller can see what the jobs still pending hold (``tags``).
    """

    def __init__(self, work: Callable[[np.ndarray, Any], T]) -> None:
        self.work = work
        self._pool: ThreadPoolExecutor | None = None
        self._jobs: list[_Job[T]] = []  # oldest first

    def make_room(self) -> None:
        """Drop the oldest jobs until a new one fits within ``MAX_JOBS`` (``submit`` does it
        too; a caller that tags a job by what the others hold calls it first)."""
        while len(self._jobs) >= MAX_JOBS:
            _discard(self._jobs.pop(0).future)

    def submit(self, frame: np.ndarray, tag: Any = None) -> None:
        """Queue ``work(frame, tag)`` (the oldest job is dropped beyond ``MAX_JOBS``); the array
        must not change until it is taken."""
        self.make_room()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samurai-ahead")
        self._jobs.append(_Job(frame, tag, self._pool.submit(self.work, frame, tag)))

    def tags(self) -> list[Any]:
        """The tags of the jobs not taken or dropped yet, oldest first."""
        return [job.tag for job in self._jobs]

    def take(self, frame: np.ndarray) -> tuple[T, float] | None:
        """``(result, seconds waited for it)`` when a job is for this very ``frame`` (its error,
        if it failed, is raised here; older jobs are dropped); else None, once no job runs, so
        that the caller may run the same graphs itself (the jobs stay)."""
        found = next((k for k, job in enumerate(self._jobs) if job.frame is frame), None)
        if found is None:
            wait([job.future for job in self._jobs])
            return None
        for older in self._jobs[:found]:
            _discard(older.future)
        future = self._jobs[found].future
        del self._jobs[: found + 1]
        start = time.perf_counter()
        result = future.result()
        return result, time.perf_counter() - start

    def drop(self) -> None:
        """Forget every job, waiting for the one running (a graph run cannot be cancelled)."""
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            _discard(job.future)


def _discard(job: Future[T]) -> None:
    """Cancel ``job`` or wait for it to end; its result, or its error, is not wanted."""
    if job.cancel():
        return
    try:
        job.result()
    except Exception as exc:  # the frame it was for is not stepped: its error does not matter
        log.debug("dropped a frame encoded ahead that failed: %s", exc)
