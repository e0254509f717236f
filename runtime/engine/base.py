"""The engine interface: load a graph against its contract, run it on device-resident values.

Why an interface: the tracker should not care whether a graph runs in ONNX Runtime on a CPU or a
GPU, or in OpenVINO; it asks an ``Engine`` for ``GraphSession``s and hands values between them.
A *value* is whatever the engine keeps its tensors in (an ``OrtValue`` on the session's device for
ONNX Runtime); numpy arrays are accepted as feeds everywhere and uploaded on the way in, and
``Engine.download`` brings a value back to the host. The tracker downloads only what SAMURAI's
decisions need (scores, boxes, the chosen mask) and what the user asked for.

Errors inside an engine (a graph that does not load, a run that fails, a provider that is
missing) become ``EngineError`` with one line saying which graph and what failed.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from samurai_onnx.runtime.contract import GraphContract

log = logging.getLogger(__name__)

# ``--device`` values; each engine maps them onto its own backends.
DEVICES = ("cpu", "cuda", "tensorrt")


class EngineError(RuntimeError):
    """A graph that an engine could not load or run; the message is one line with the fix."""


@dataclass(frozen=True)
class EngineSettings:
    """How to run a bundle: the target's engine, providers and options, filtered by ``device``.

    ``providers`` are (name, options) pairs in preference order; ``threads`` is the intra-op
    thread count (None: the engine's default, all cores).
    """

    engine: str = "onnxruntime"
    providers: tuple[tuple[str, dict[str, Any]], ...] = (("CPUExecutionProvider", {}),)
    threads: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # engine-wide (e.g. OpenVINO's)
    profile_prefix: str | None = None


class GraphSession(ABC):
    """One loaded graph. ``run`` takes numpy arrays or engine values and returns engine values.

    ``seconds`` and ``calls`` add up the time spent inside ``run`` (the bench reports the time
    a frame spends in graphs and outside them).
    """

    def __init__(self, contract: GraphContract, path: Path) -> None:
        self.contract = contract
        self.path = path
        self.seconds = 0.0
        self.calls = 0

    def run(
        self, feeds: Mapping[str, Any], into: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """Run the graph on ``feeds`` (every input of the contract); returns every output.

        ``into`` names outputs to be written into preallocated values (e.g. the memory pools'
        second buffer), which are then returned as they are.
        """
        missing = [n for n in self.contract.input_names if n not in feeds]
        if missing:
            raise EngineError(f"{self.contract.name}: no value for input(s) {', '.join(missing)}")
        start = time.perf_counter()
        try:
            out = self._run(feeds, into or {})
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1
        return out

    @abstractmethod
    def _run(self, feeds: Mapping[str, Any], into: Mapping[str, Any]) -> dict[str, Any]:
        """Engine-specific run; errors must be raised as ``EngineError``."""

    def replay_counts(self) -> tuple[int, int, int] | None:
        """(runs replayed as CUDA graphs, runs, signatures captured) so far, where the session
        captures CUDA graphs; None elsewhere."""
        return None


class Engine(ABC):
    """Loads graphs and moves values between the host and the engine's device."""

    name = "engine"
    device = "cpu"  # where values live: "cpu" or "cuda"
    # graphs write their outputs into the same buffers run after run (CUDA graphs): an output
    # is valid only until its graph runs again
    fixed_buffers = False

    @abstractmethod
    def load(self, path: Path, contract: GraphContract) -> GraphSession:
        """A session for the graph file at ``path``, checked against ``contract``."""

    @abstractmethod
    def upload(self, array: np.ndarray) -> Any:
        """A value on the engine's device holding ``array``."""

    @abstractmethod
    def download(self, value: Any) -> np.ndarray:
        """``value`` as a numpy array on the host (a view, never to be written, on the CPU)."""

    @abstractmethod
    def zeros(self, shape: Sequence[int], dtype: str) -> Any:
        """A value of zeros on the engine's device (buffers such as the memory pools)."""

    def describe(self) -> str:
        """One line naming the engine and where it runs (logged and shown by the bench)."""
        return f"{self.name} on {self.device}"

    def run_precision(self, graph: str, file_precision: str) -> str:
        """The precision ``graph``'s arithmetic runs at here, for a file of ``file_precision``.

        Why: the tolerance a graph is checked against is that of what really runs; OpenVINO
        with a bf16 hint runs an fp32 file in bf16. Other engines run the file as it is.
        """
        return file_precision


def create_engine(settings: EngineSettings) -> Engine:
    """The engine ``settings.engine`` names, set up with the settings' providers and options."""
    if settings.engine == "onnxruntime":
        from samurai_onnx.runtime.engine.onnxruntime import OrtEngine

        return OrtEngine(settings)
    if settings.engine == "openvino":
        try:
            from samurai_onnx.runtime.engine.openvino import OpenVinoEngine  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise EngineError(
                f"the bundle's target runs on OpenVINO, which is not available ({exc}); "
                "install it with pip install 'samurai-onnx[openvino]'"
            ) from None
        return OpenVinoEngine(settings)  # type: ignore[no-any-return,unused-ignore]
    raise EngineError(
        f"unknown engine {settings.engine!r}; this runtime has onnxruntime and openvino"
    )
