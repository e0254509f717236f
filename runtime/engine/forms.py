"""Which form of a graph runs: the fastest of a bundle's forms, timed on the device it runs on.

Why at run time: a bundle may hold a graph in more than one form (``bundle.FORMS``: depthwise
convolutions grouped or dense, attention fused or not), each checked against PyTorch by the
compiler, so any of them gives the model's numbers. Which one is fastest is a property of the
device and its kernels (cuDNN's depthwise kernels, ONNX Runtime's fused fp32 attention), not of
the bundle, so it is measured where the bundle runs: every form of the graph runs on the same
steady-state inputs (a full memory bank, one object), and the fastest by median is kept; the
others are released. Like cuDNN's algorithm search, this costs a few runs per form when the
graphs are loaded, once per tracker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from samurai_onnx.runtime.bundle import FORMS
from samurai_onnx.runtime.contract import GraphContract
from samurai_onnx.runtime.engine.base import Engine, GraphSession

log = logging.getLogger(__name__)

MAIN = "main"  # the name of a graph's main form (bundle.yaml: the component's own file)
# ``forms=`` of the tracker: ``fastest`` (timed, the default), ``main``, or one form by name
# (used where a graph has it; the main form elsewhere)
CHOICES = ("fastest", MAIN, *FORMS)


def check_forms(forms: str) -> str:
    """``forms`` if it is one of ``CHOICES``, else ``ValueError`` naming them."""
    if forms not in CHOICES:
        raise ValueError(f"--forms {forms!r} is not one of {', '.join(CHOICES)}")
    return forms


@dataclass(frozen=True)
class Timing:
    median: float
    p90: float


def time_call(
    fn: Callable[[], Any],
    repeats: int,
    sync: Callable[[], None] = lambda: None,
    *,
    warmup: int = 1,
) -> Timing:
    """Median and p90 seconds of ``repeats`` calls after ``warmup`` calls (``sync`` waits for a
    device, so its queued work is timed too)."""
    for _ in range(warmup):
        fn()
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return Timing(float(np.median(ts)), float(np.percentile(ts, 90)))


@dataclass
class FormChoice:
    """What ran for one graph: the form chosen and each timed form's median seconds."""

    graph: str
    chosen: str
    seconds: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        """e.g. ``memory_encoder: dense (1.2 ms; main 9.5 ms)``."""
        if not self.seconds:
            return f"{self.graph}: {self.chosen}"

        def ms(form: str) -> str:
            value = self.seconds[form] * 1e3
            return f"{value:.0f} ms" if value >= 100 else f"{value:.3g} ms"

        others = "; ".join(f"{f} {ms(f)}" for f in self.seconds if f != self.chosen)
        return f"{self.graph}: {self.chosen} ({ms(self.chosen)}; {others})"


def fastest_form(
    engine: Engine,
    contract: GraphContract,
    files: Mapping[str, Path],
    feeds: Mapping[str, np.ndarray],
    *,
    repeats: int = 5,
) -> tuple[GraphSession, FormChoice]:
    """Load each of ``files`` (form -> graph file), time it on ``feeds``, keep the fastest.

    Three warm-up runs come first: the first run of new shapes pays for algorithm searches and
    allocations, and with CUDA graphs the second run captures; what is timed is what a video's
    steady state runs. Ties go to the earlier form (the main form first).
    """
    fed = {k: engine.upload(v) for k, v in feeds.items()}
    best: tuple[GraphSession, str] | None = None
    choice = FormChoice(contract.name, MAIN)
    for form, path in files.items():
        session = engine.load(path, contract)
        seconds = time_call(partial(session.run, fed), repeats, warmup=3).median
        choice.seconds[form] = seconds
        if best is None or seconds < choice.seconds[best[1]]:
            best = (session, form)
        del session  # a slower form's session is released here
    assert best is not None, "no forms given"
    session, choice.chosen = best
    session.seconds, session.calls = 0.0, 0  # what the tracker's own runs cost, from here on
    log.info("graph form %s", choice.line())
    return session, choice
