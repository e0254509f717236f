"""The Ray side of ``samurai-eval run``: a local or remote Ray, a pool of tracker actors, and the
loop that hands them sequences and collects results and progress.

Each actor is a :class:`~samurai_onnx.compiler.evaluate.runner.SequenceWorker` reserving
``num_cpus=threads`` (and ``num_gpus=1`` on a GPU device), so Ray itself keeps workers x threads
within the cores; progress comes back through a Ray queue, results as task returns (so a remote
cluster needs no shared output folder, only the dataset and the bundle at the same paths).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from typing import Any

from samurai_onnx.compiler.evaluate.runner import GPU_DEVICES, Driver, one_line
from samurai_onnx.compiler.evaluate.worker import Job, SequenceWorker

OBJECT_STORE_BYTES = 96 * 1024 * 1024  # results are a few KB a sequence; Ray's minimum is 75 MB


def init_ray(address: str | None, verbose: bool = False) -> bool:
    """Connect to ``address`` or start a quiet local Ray with this machine's cores; True when
    this call started it (and so must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    level = logging.INFO if verbose else logging.ERROR
    if address:
        ray.init(address=address, log_to_driver=verbose, logging_level=level)
    else:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            object_store_memory=OBJECT_STORE_BYTES,
            log_to_driver=verbose,
            logging_level=level,
        )
    return True


def cluster_resources() -> dict[str, float]:
    """CPUs and GPUs of the whole cluster, to size the pool before any actor starts."""
    import ray

    return dict(ray.cluster_resources())


def run_ray(driver: Driver, jobs: deque[Job], opts: dict[str, Any]) -> None:
    """Run ``jobs`` on ``opts["workers"]`` actors until each is tracked or out of retries.

    A failed task (the worker's exception) frees its actor for the next job; a dead actor (a
    crash, out of memory) is replaced, so one bad sequence never costs the pool a worker.
    """
    import ray
    from ray.util.queue import Queue

    queue = Queue(actor_options={"num_cpus": 0})
    actor_cls = ray.remote(
        num_cpus=opts["threads"],
        num_gpus=1 if opts["device"] in GPU_DEVICES else 0,
        max_restarts=0,
    )(SequenceWorker)

    def new_actor() -> Any:
        return actor_cls.remote(opts["bundle"], opts["device"], opts["threads"], queue)

    idle = [new_actor() for _ in range(opts["workers"])]
    running: dict[Any, tuple[Any, Job]] = {}
    try:
        while jobs or running:
            while idle and jobs:
                actor, job = idle.pop(), jobs.popleft()
                driver.start(job)
                running[actor.track.remote(job)] = (actor, job)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.25)
            for name, attempt, n in queue.get_nowait_batch(queue.qsize()):
                driver.progress(name, attempt, n)
            for ref in ready:
                actor, job = running.pop(ref)
                try:
                    tracked = ray.get(ref)
                except ray.exceptions.RayActorError as exc:  # the worker died: replace it
                    ray.kill(actor)
                    idle.append(new_actor())
                    retry = driver.fail(job, f"worker died ({one_line(exc)})")
                except ray.exceptions.RayTaskError as exc:
                    idle.append(actor)
                    retry = driver.fail(job, one_line(exc))
                else:
                    idle.append(actor)
                    driver.finish(job, tracked)
                    continue
                if retry is not None:
                    jobs.append(retry)
    finally:
        for actor in idle + [a for a, _ in running.values()]:
            ray.kill(actor)
        queue.shutdown()
