"""``samurai-eval run``: track every sequence of a dataset, spread over Ray actors.

A benchmark is hundreds of independent sequences, so the unit of work is a sequence: each Ray
actor holds one :class:`~samurai_onnx.runtime.Tracker` (the bundle's sessions are loaded once
per worker, not per sequence) with an explicit ONNX Runtime thread count, and reserves that many
CPUs from Ray (``num_cpus=threads``; ``num_gpus=1`` with ``--device cuda``), so that workers x
threads never exceeds the cores. The driver hands out sequences, collects per-frame progress from
a Ray queue into one progress bar, writes each finished sequence's files atomically as it
arrives (so an interrupted run keeps everything finished), retries a failed sequence and reports
it if it fails again, never stopping the others. ``backend="local"`` runs the same loop
in-process without Ray (one worker).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from samurai_onnx.compiler.evaluate.datasets import Dataset
from samurai_onnx.compiler.evaluate.results import (
    is_complete,
    result_paths,
    write_atomic,
    write_result,
)
from samurai_onnx.compiler.evaluate.worker import Job, SequenceWorker, Tracked

log = logging.getLogger(__name__)

GPU_DEVICES = ("cuda", "tensorrt")
SUMMARY_NAME = "eval_run.json"


class RunError(ValueError):
    """Options that cannot work (pool larger than the cluster, no GPU for --device cuda)."""


@dataclass
class RunSummary:
    backend: str
    workers: int
    threads: int
    device: str | None
    sequences: dict[str, dict[str, Any]] = field(default_factory=dict)
    wall_seconds: float = 0.0

    def names(self, status: str) -> list[str]:
        return [n for n, s in self.sequences.items() if s["status"] == status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "workers": self.workers,
            "threads": self.threads,
            "device": self.device,
            "wall_seconds": round(self.wall_seconds, 3),
            "tracked": len(self.names("tracked")),
            "skipped": len(self.names("skipped")),
            "failed": len(self.names("failed")),
            "sequences": self.sequences,
        }


def size_pool(
    jobs: int, cpus: int, gpus: int, device: str | None, workers: int | None, threads: int | None
) -> tuple[int, int]:
    """(workers, threads per worker) with workers x threads <= cpus and one GPU per worker."""
    if (workers is not None and workers < 1) or (threads is not None and threads < 1):
        raise RunError("--workers and --threads must be at least 1")
    if device in GPU_DEVICES:
        if gpus < 1:
            raise RunError(f"--device {device} needs GPUs, and the Ray cluster has none")
        workers = workers or max(1, min(gpus, jobs))
        if workers > gpus:
            raise RunError(f"--workers {workers} needs {workers} GPUs; the cluster has {gpus}")
    elif workers is None:
        workers = max(1, min(jobs, cpus // (threads or 1)))
    threads = threads or max(1, cpus // workers)
    if workers * threads > cpus:
        raise RunError(
            f"--workers {workers} x --threads {threads} needs {workers * threads} CPUs, but "
            f"there are {cpus}; lower one of them"
        )
    return workers, threads


def plan(dataset: Dataset, out_dir: Path) -> tuple[list[Job], list[str]]:
    """Jobs for the sequences without a complete result; names of those already done."""
    jobs, done = [], []
    for seq in dataset.sequences:
        box_path, _ = result_paths(dataset.format, out_dir, seq.name)
        if is_complete(box_path, seq.num_frames):
            done.append(seq.name)
        else:
            jobs.append(Job(seq.name, str(seq.frames_dir), seq.first_box, seq.num_frames))
    return jobs, done


class Driver:
    """Bookkeeping shared by both backends: progress, retries, files, the summary."""

    def __init__(self, fmt: str, out_dir: Path, retries: int, summary: RunSummary, bar: tqdm):
        self.fmt, self.out_dir, self.retries = fmt, out_dir, retries
        self.summary, self.bar = summary, bar
        self.counted: dict[tuple[str, int], int] = {}
        self.total = len(summary.sequences)

    def progress(self, name: str, attempt: int, n: int) -> None:
        if (name, attempt) in self.counted:  # late reports of a finished attempt are dropped
            self.counted[(name, attempt)] += n
            self.bar.update(n)

    def start(self, job: Job) -> None:
        self.counted[(job.name, job.attempt)] = 0

    def finish(self, job: Job, tracked: Tracked) -> None:
        self.bar.update(len(tracked.boxes) - self.counted.pop((job.name, job.attempt), 0))
        write_result(self.fmt, self.out_dir, job.name, tracked.boxes, tracked.times)
        seconds = sum(tracked.times)
        self.summary.sequences[job.name] = {
            "status": "tracked",
            "frames": len(tracked.boxes),
            "seconds": round(seconds, 3),
            "fps": round(len(tracked.boxes) / seconds, 3) if seconds > 0 else None,
            "attempts": job.attempt,
            "worker": tracked.worker,
        }
        self._postfix()

    def fail(self, job: Job, error: str) -> Job | None:
        """Record a failed attempt; the retry job, or None once retries are used up."""
        counted = self.counted.pop((job.name, job.attempt), 0)
        if job.attempt <= self.retries:
            self.bar.total += counted
            log.warning("%s failed (attempt %d): %s; retrying", job.name, job.attempt, error)
            self._postfix()
            return replace(job, attempt=job.attempt + 1)
        self.bar.total -= job.num_frames - counted
        log.error("%s failed after %d attempt(s): %s", job.name, job.attempt, error)
        self.summary.sequences[job.name] = {
            "status": "failed",
            "frames": job.num_frames,
            "attempts": job.attempt,
            "error": error,
        }
        self._postfix()
        return None

    def _postfix(self) -> None:
        done = len(self.summary.names("tracked")) + len(self.summary.names("skipped"))
        failed = len(self.summary.names("failed"))
        self.bar.set_postfix_str(f"{done}/{self.total} sequences, {failed} failed")


def one_line(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # a RayTaskError carries the worker's exception
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}".rstrip(": ")


def _run_local(
    driver: Driver, jobs: deque[Job], bundle: str, device: str | None, threads: int
) -> None:
    worker = SequenceWorker(bundle, device, threads)
    while jobs:
        job = jobs.popleft()
        driver.start(job)
        try:
            tracked = worker.track(job, functools.partial(driver.progress, job.name, job.attempt))
        except Exception as exc:
            retry = driver.fail(job, one_line(exc))
            if retry is not None:
                jobs.append(retry)
            continue
        driver.finish(job, tracked)


def run_dataset(
    dataset: Dataset,
    bundle: str | Path,
    out_dir: str | Path,
    *,
    device: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    retries: int = 1,
    backend: str = "ray",
    address: str | None = None,
    progress: bool = True,
    verbose: bool = False,
) -> RunSummary:
    """Track every sequence of ``dataset`` without a complete result in ``out_dir``."""
    out = Path(out_dir)
    inputs = {dataset.root.resolve(), *(s.frames_dir.resolve() for s in dataset.sequences)}
    if out.resolve() in inputs:
        raise RunError(f"--out {out} is a dataset folder; write results somewhere else")
    if retries < 0:
        raise RunError("--retries must be 0 or more")
    jobs, done = plan(dataset, out)
    if done:
        log.info("%d sequence(s) already have complete results; skipped", len(done))
    started = time.perf_counter()
    ray_started = False
    if backend == "local":
        if workers not in (None, 1):
            raise RunError("--backend local runs one worker; use Ray for more")
        w, t = size_pool(len(jobs), os.cpu_count() or 1, 0, None, 1, threads)
    elif backend == "ray":
        from samurai_onnx.compiler.evaluate.ray_pool import cluster_resources, init_ray

        ray_started = init_ray(address, verbose) if jobs else False
        resources = cluster_resources() if jobs else {}
        cpus, gpus = int(resources.get("CPU", 0)), int(resources.get("GPU", 0))
        w, t = size_pool(len(jobs), cpus, gpus, device, workers, threads) if jobs else (0, 0)
    else:
        raise RunError(f"unknown backend {backend!r}; use ray or local")
    summary = RunSummary(backend, w, t, device)
    summary.sequences = {n: {"status": "skipped"} for n in done}
    summary.sequences.update({j.name: {"status": "pending"} for j in jobs})
    bar = tqdm(
        total=sum(j.num_frames for j in jobs),
        desc="samurai-eval",
        unit="frame",
        disable=not progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    driver = Driver(dataset.format, out, retries, summary, bar)
    try:
        with bar:
            if backend == "local" and jobs:
                _run_local(driver, deque(jobs), str(bundle), device, t)
            elif jobs:
                from samurai_onnx.compiler.evaluate.ray_pool import run_ray

                opts = {"bundle": str(bundle), "device": device, "threads": t, "workers": w}
                run_ray(driver, deque(jobs), opts)
    finally:
        summary.wall_seconds = time.perf_counter() - started
        if ray_started:
            import ray

            ray.shutdown()
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / SUMMARY_NAME, _json(summary.to_dict()))
    return summary


def _json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, indent=2) + "\n"
