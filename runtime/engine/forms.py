"""Which form of a graph runs: the fastest of a bundle's forms, timed on the device it runs on.

Why at run time: a bundle may hold a graph in more than one form (``bundle.FORMS``: depthwise
convolutions grouped or dense, attention fused or not), each checked against PyTorch by the
compiler, so any of them gives the model's numbers. Which one is fastest is a property of the
device and its kernels (cuDNN's depthwise kernels, ONNX Runtime's fused fp32 attention), not of
the bundle, so it is measured where the bundle runs: every form of the graph runs on the same
steady-state inputs (a full memory bank, one object), and the fastest by median is kept; the
others are released. Like cuDNN's algorithm search, this costs a few runs per form when the
graphs are loaded: milliseconds on a GPU, each time; seconds on a CPU, so there the choice is
cached per machine and bundle (``FormCache``).

Why the forms are also compared: each form was checked against PyTorch by the compiler, on the
CPU, but a device's kernel can still be wrong (onnxruntime-gpu 1.31.1's fp32 ``MultiHeadAttention``
gave memory attention's cross-attention a relative error of 0.48 on an H200 while the unfused
form agreed with the CPU to 5e-7). So the first run of every form is kept, and forms that differ
by more than twice the graph's tolerance (both were within it of PyTorch) are judged against the
main form's file run on ONNX Runtime's CPU provider, the compiler's own check: a form further
from it than that tolerance (plus one bfloat16 step of each value: memories are rounded to
bfloat16 in the graphs) is left out with a warning, whichever form it is, and is not timed into
the choice. Forms that agree cost nothing extra.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from samurai_onnx.runtime.bundle import FORMS, INT8_SCORE_FORMS
from samurai_onnx.runtime.contract import GraphContract
from samurai_onnx.runtime.engine.base import Engine, EngineError, EngineSettings, GraphSession

log = logging.getLogger(__name__)

MAIN = "main"  # the name of a graph's main form (bundle.yaml: the component's own file)
# ``forms=`` of the tracker: ``fastest`` (timed, the default), ``main``, or one form by name
# (used where a graph has it; the main form elsewhere)
CHOICES = ("fastest", MAIN, *FORMS)
SLOW = 0.25  # seconds per run from which a form is timed by fewer runs (see fastest_form)


def check_forms(forms: str, what: str = "--forms") -> str:
    """``forms`` if it is one of ``CHOICES``, else ``ValueError`` naming them."""
    if forms not in CHOICES:
        raise ValueError(f"{what} {forms!r} is not one of {', '.join(CHOICES)}")
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
    """What ran for one graph: the form chosen and each timed form's median seconds
    (``cached``: timed by an earlier run on this machine, see ``FormCache``)."""

    graph: str
    chosen: str
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False
    failed: list[str] = field(default_factory=list)  # forms that would not load or run here
    off: dict[str, float] = field(default_factory=dict)  # forms too far from the CPU (max abs)
    skipped: dict[str, str] = field(default_factory=dict)  # forms not run here, and why

    def line(self) -> str:
        """e.g. ``memory_encoder: dense (1.2 ms; main 9.5 ms)``."""
        not_run = [f"{f} not run: {why}" for f, why in self.skipped.items()]
        if not self.seconds:
            return f"{self.graph}: {self.chosen}" + (f" ({'; '.join(not_run)})" if not_run else "")

        def ms(form: str) -> str:
            value = self.seconds[form] * 1e3
            return f"{value:.0f} ms" if value >= 100 else f"{value:.3g} ms"

        others = [f"{f} {ms(f)}" for f in self.seconds if f != self.chosen]
        others += [f"{f} off by {self.off[f]:.3g}" if f in self.off else f"{f} failed" for f in self.failed]
        others += not_run
        cached = ", cached" if self.cached else ""
        return f"{self.graph}: {self.chosen} ({'; '.join([ms(self.chosen), *others])}{cached})"


# the form whose score products are uint8 x int8 at run time, and the same integers as uint8 x
# uint8 products (keys shifted by 128)
INT8_SCORES, UINT8_SCORES = INT8_SCORE_FORMS


def forms_not_run(forms: Sequence[str], engine: str, saturates: bool) -> dict[str, str]:
    """Which of a graph's ``forms`` not to consider on this host, and why (empty: all).

    ``int8attn`` on ONNX Runtime where its uint8 x int8 products can saturate (``saturates``:
    ``host.int8_saturates_here``, x86 without VNNI or AMX): its keys are int8 at run time, so
    ONNX Runtime's exact path (which rewrites constant weights) cannot reach them, and its
    scores would not be the integers the compiler checked (an AVX2-only EPYC: up to 6e-4 of the
    outputs' range off in the tests here, far more on adversarial inputs). ``u8attn`` holds the
    same integers with its keys as uint8, which ONNX Runtime multiplies exactly everywhere, so
    it is timed there instead. Where ``int8attn`` runs (VNNI, AMX, ARM; other engines), ``u8attn``
    is not timed: the same numbers, and MLAS's AVX512-VNNI and AMX kernels are uint8 x int8 only.
    """
    onnxruntime_saturates = engine == "onnxruntime" and saturates
    if INT8_SCORES in forms and onnxruntime_saturates:
        return {INT8_SCORES: "uint8 x int8 products saturate on this CPU (no VNNI/AMX)"}
    if INT8_SCORES in forms and UINT8_SCORES in forms:
        return {UINT8_SCORES: "int8attn computes the same integers on faster kernels here"}
    return {}


class FormCache:
    """Choices timed earlier on this machine, so that a CPU pays for timing once per bundle.

    Why only CPUs: timing a form there takes seconds per run (half a minute for a tiny bundle on
    2 cores), on a GPU milliseconds. A choice is keyed by everything that decides it (the
    caller's ``key``: the forms' files by sha256, the engine line with its precision and
    threads, the CPU and its flags); a form that failed to load or run is remembered as failed
    (same files, engine and machine: it would fail again). The file (``<cache>/forms.json``) is
    read as untrusted input (size-limited, every entry checked against the forms at hand;
    anything else is ignored) and rewritten atomically. Delete it to have every bundle timed
    (and every failed form tried) again.
    """

    LIMIT = 1 << 20  # bytes read at most
    ENTRIES = 256  # choices kept (the oldest are dropped)

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, Any]:
        if not self.path.is_file():  # absent, or not a file to read
            return {}
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(self.LIMIT + 1)
            data = json.loads(raw) if len(raw) <= self.LIMIT else None
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str, graph: str, forms: Sequence[str]) -> FormChoice | None:
        entry = self._read().get(key)
        if not isinstance(entry, dict):
            return None
        chosen, seconds = entry.get("chosen"), entry.get("seconds")
        failed, off = entry.get("failed", []), entry.get("off", {})
        if (
            chosen not in forms
            or not isinstance(seconds, dict)
            or not isinstance(failed, list)
            or not all(isinstance(f, str) for f in failed)
            or not isinstance(off, dict)
            or not set(off) <= set(failed)
            or not all(isinstance(v, float) and math.isfinite(v) for v in off.values())
            or (MAIN in failed and MAIN not in off)  # main fails only by being off
            or chosen in failed
            or set(seconds) & set(failed)
            or set(seconds) | set(failed) != set(forms)
            or len(failed) != len(set(failed))
            or not all(isinstance(v, float) and math.isfinite(v) for v in seconds.values())
        ):
            return None
        return FormChoice(
            graph, str(chosen), {str(k): float(v) for k, v in seconds.items()}, True, list(failed),
            {str(k): float(v) for k, v in off.items()},
        )  # fmt: skip

    def put(self, key: str, choice: FormChoice) -> None:
        data = self._read()
        data.pop(key, None)
        data[key] = {
            "chosen": choice.chosen, "seconds": choice.seconds, "failed": choice.failed,
            "off": {f: v for f, v in choice.off.items() if math.isfinite(v)},
        }  # fmt: skip
        data = dict(list(data.items())[-self.ENTRIES :])
        staged = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            staged.write_text(json.dumps(data))
            os.replace(staged, self.path)
        except OSError as exc:  # a read-only home: the choice is timed again next time
            log.debug("could not write %s (%s)", self.path, exc)
            staged.unlink(missing_ok=True)


def _pairs(
    a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]
) -> Iterator[tuple[np.ndarray, np.ndarray] | None]:
    """The outputs both runs have, as float64 pairs; None for one whose shapes differ."""
    for name in a.keys() & b.keys():
        x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
        yield (x, y) if x.shape == y.shape else None


def max_difference(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> float:
    """The largest absolute difference between two runs' outputs over every output both have
    (equal values count 0, infinities included; NaN against anything, or a shape that differs,
    is ``inf``)."""
    worst = 0.0
    for pair in _pairs(a, b):
        if pair is None:
            return math.inf
        x, y = pair
        if not x.size:
            continue
        with np.errstate(invalid="ignore"):
            diff = np.where(x == y, 0.0, np.abs(x - y))
        worst = max(worst, float(np.nan_to_num(diff, nan=math.inf, posinf=math.inf).max()))
    return worst


# One bfloat16 step, relative to the value: the graphs round memories to bfloat16 as SAMURAI
# stores them, so wherever two runs differ at all before that rounding (summation order, another
# kernel) a memory value may land one step apart (2^-8 to 2^-7 of it: the H200's fp32 memory
# encoder differed from the CPU's by 2.2e-3 of the largest value, while its wrong fp32 attention
# was 0.48 off).
BF16_STEP = 2.0**-7


def agrees(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray], tolerance: float) -> bool:
    """Whether every output both runs have matches within ``tolerance`` plus one bfloat16 step
    of the value, element by element (same shapes; NaN matches nothing)."""
    for pair in _pairs(a, b):
        if pair is None:
            return False
        x, y = pair
        with np.errstate(invalid="ignore"):
            slack = tolerance + BF16_STEP * np.maximum(np.abs(x), np.abs(y))
            if not ((x == y) | (np.abs(x - y) <= slack)).all():
                return False
    return True


def cpu_reference(
    path: Path, contract: GraphContract, feeds: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """``path`` run once on ONNX Runtime's CPU provider: what the compiler checked each form
    against PyTorch with, so the judge of forms that disagree on a device."""
    from samurai_onnx.runtime.engine.onnxruntime import OrtEngine

    engine = OrtEngine(EngineSettings())
    out = engine.load(path, contract).run(feeds)
    return {k: np.array(engine.download(v)) for k, v in out.items()}


def fastest_form(
    engine: Engine,
    contract: GraphContract,
    files: Mapping[str, Path],
    feeds: Mapping[str, np.ndarray],
    *,
    repeats: int = 5,
    cache: FormCache | None = None,
    key: str = "",
    tolerance: float = 0.0,
    reference: Callable[[], Mapping[str, np.ndarray]] | None = None,
) -> tuple[GraphSession, FormChoice]:
    """Load each of ``files`` (form -> graph file), time it on ``feeds``, keep the fastest.

    Warm-up runs come first: the first run of new shapes pays for algorithm searches and
    allocations, and with CUDA graphs the second run captures; what is timed is what a video's
    steady state runs (median of ``repeats``, after three warm-up runs). A graph whose second
    run takes ``SLOW`` seconds or more (a large graph on a CPU) is timed by its median of two
    more runs instead: its forms differ by far more than a run's noise there, and eight runs per
    form would add minutes to loading. Ties go to the earlier form (the main form first).
    With a ``cache`` (CPUs), a choice found under ``key`` is used without timing, and a new
    one is stored there.

    ``tolerance`` (> 0: the graph's tolerance against PyTorch) turns on the comparison of the
    forms' first runs (see the module docstring); ``reference`` gives the outputs to judge by
    when they differ (default: the main form's file on ONNX Runtime's CPU provider, which on
    that engine is the main form's own first run).
    """
    remembered = cache.get(key, contract.name, list(files)) if cache is not None else None
    if remembered is not None:
        log.info("graph form %s", remembered.line())
        return engine.load(files[remembered.chosen], contract), remembered
    fed = {k: engine.upload(v) for k, v in feeds.items()}
    sessions: dict[str, GraphSession] = {}
    outputs: dict[str, dict[str, np.ndarray]] = {}
    choice = FormChoice(contract.name, MAIN)
    for form, path in files.items():
        try:
            session = engine.load(path, contract)
            run = partial(session.run, fed)
            first = run()  # new shapes: allocations, algorithm searches
            if tolerance > 0:  # copies: a fixed output buffer is written again by the next run
                outputs[form] = {k: np.array(engine.download(v)) for k, v in first.items()}
            start = time.perf_counter()
            run()
            slow = time.perf_counter() - start >= SLOW
            seconds = time_call(run, 2 if slow else repeats, warmup=0 if slow else 1).median
        except EngineError as exc:
            if form == MAIN:
                raise
            # e.g. an engine or provider that cannot run this form: the others still can
            log.warning("%s: the %s form is left out (%s)", contract.name, form, exc)
            choice.failed.append(form)
            continue
        choice.seconds[form] = seconds
        sessions[form] = session
    if tolerance > 0:
        if reference is None and engine.name == "onnxruntime" and engine.device == "cpu":
            reference = partial(outputs.__getitem__, MAIN)  # that run is the reference: no rerun
        _leave_out_forms_that_are_off(choice, outputs, tolerance, reference or partial(
            cpu_reference, files[MAIN], contract, feeds))  # fmt: skip
    choice.chosen = min(choice.seconds, key=lambda f: choice.seconds[f])  # ties: the earlier form
    session = sessions[choice.chosen]
    sessions.clear()  # the other forms' sessions are released here
    session.seconds, session.calls = 0.0, 0  # what the tracker's own runs cost, from here on
    log.info("graph form %s", choice.line())
    if cache is not None:
        cache.put(key, choice)
    return session, choice


def _leave_out_forms_that_are_off(
    choice: FormChoice,
    outputs: Mapping[str, Mapping[str, np.ndarray]],
    tolerance: float,
    reference: Callable[[], Mapping[str, np.ndarray]],
) -> None:
    """Move the forms whose first run does not agree with the reference within ``tolerance``
    (``agrees``) out of ``choice.seconds`` (into ``failed`` and ``off``, with their max abs
    difference); the reference is computed only where two forms do not agree within twice the
    tolerance. Where every form is off, the closest one stays (the device can do no better)
    and the warning says so."""
    ran = [f for f in choice.seconds if f in outputs]
    if len(ran) < 2 or all(agrees(outputs[ran[0]], outputs[f], 2 * tolerance) for f in ran[1:]):
        return
    want = reference()
    diffs = {f: max_difference(outputs[f], want) for f in ran}
    off = [f for f in ran if not agrees(outputs[f], want, tolerance)]
    if len(off) == len(ran):
        keep = min(ran, key=lambda f: diffs[f])
        off.remove(keep)
        log.warning(
            "%s: every form differs from the CPU by more than the graph's tolerance %.3g (%s); "
            "the closest, %s, runs: check this device with samurai-validate, or use --device cpu",
            choice.graph, tolerance, ", ".join(f"{f} {diffs[f]:.3g}" for f in ran), keep,
        )  # fmt: skip
    for form in off:
        log.warning(
            "%s: the %s form is left out: its outputs on this device are %.3g from the CPU's "
            "(max abs; the graph's tolerance is %.3g)", choice.graph, form, diffs[form], tolerance,
        )  # fmt: skip
        del choice.seconds[form]
        choice.failed.append(form)
        choice.off[form] = diffs[form]
