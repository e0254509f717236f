"""Fixed buffers per input signature, so that ONNX Runtime can capture a graph as a CUDA graph.

Why: on a GPU the decoder, the memory encoder and memory attention are launch-bound at batch 1
(hundreds of small kernels; the mask decoder took 3-5 ms on an H100 for ~7 GFLOP). A CUDA graph
replays all of a run's kernels with one launch. ONNX Runtime captures one when the CUDA
provider has ``enable_cuda_graph`` and a run carries a ``gpu_graph_id``, on two conditions:
every input and output is bound to the same device buffer on every replay, and the shapes do not
change. So each distinct *signature* of a run (the host feeds' shapes, the device feeds' buffers
and shapes, the buffers outputs are written into) gets, the third time in a row of recent runs
it is seen (``CAPTURE_AT``), its own graph id, a device copy of every host feed (updated in
place on each run) and fixed outputs. Signatures not seen that often run as before (id -1: no
capture); in the steady state the signatures repeat (the memory pools alternate between two
buffers, so most graphs have two).

The fixed outputs are the very values the signature's first run wrote (kept for the most recent
``MAX_PENDING`` uncaptured signatures; later uncaptured runs of it write into them): a graph's
output buffers then do not change from its first run on, so the signatures of the graphs that
read them repeat from the next frame on. With fresh buffers at the first run, each graph could
only settle once every graph upstream had been captured: on an H200 CUDA graphs then gained
nothing end to end, and this path on the CPU showed the decoder and the memory encoder still
uncaptured 34 frames into a video.

Why the third sighting and not the second: while the memory bank grows (a video's first 16
frames) memory attention's shapes change every frame, so its outputs are fresh buffers, and
the allocator hands the same addresses back every other frame: the decoder's signature then
repeats exactly once. Capturing at the second sighting spent the decoder's 8 graph ids on such
signatures before the steady state (an H200 bench, 0 of 240 decoder runs replayed; on the CPU,
after the bench's per-graph timing, 6 of them by frame 17 of a one-object video).

What callers must respect: an output not written into a given value is valid until the same
graph runs again with the same signature (the tracker consumes every output within its frame).

Without ``enable_cuda_graph`` the same code runs on any provider (``fixed_buffers=True``), which
is how CI tests it on the CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from samurai_onnx.runtime.contract import GraphContract
from samurai_onnx.runtime.engine.gate import DeviceGate

log = logging.getLogger(__name__)

MAX_GRAPHS = 8  # captured signatures per session (each holds its outputs and the graph's memory)
MAX_PENDING = 4  # recent uncaptured signatures whose first outputs are kept as their buffers
CAPTURE_AT = 3  # the sighting of a signature that captures it


def ort_value(value: Any) -> Any:
    """The ``OrtValue`` inside an engine value (a host-backed wrapper or the value itself)."""
    return getattr(value, "value", value)


@dataclass
class _Pending:
    """A recent signature not captured yet: the outputs of its first run (its buffers from then
    on) and how often it was seen."""

    outputs: dict[str, Any]
    sightings: int


@dataclass
class Capture:
    """One signature's fixed buffers and the IO binding that names them."""

    graph_id: int
    binding: Any
    host_inputs: dict[str, Any]  # persistent engine values, updated from the host feeds
    outputs: dict[str, Any]  # every output's value: preallocated, or the one written into
    bound: list[Any]  # every bound value, kept alive (a CPU value does not own its memory)


class CapturedRuns:
    """Runs of one session with fixed buffers per signature (see the module docstring)."""

    def __init__(
        self,
        session: Any,
        contract: GraphContract,
        upload: Callable[[np.ndarray], Any],
        run_options: Callable[[int], Any],
        gate: DeviceGate | None = None,
    ) -> None:
        self.session = session
        # captures run alone, other device work around them shared (gate.py: prefetch's thread)
        self.gate = gate or DeviceGate()
        self.contract = contract
        self.upload, self.run_options = upload, run_options
        self.captures: dict[tuple[Any, ...], Capture] = {}
        # recent signatures not captured yet, most recent last
        self.pending: dict[tuple[Any, ...], _Pending] = {}
        self._full_logged = False
        # how many runs replayed a captured signature, of all runs (the bench reports both: a
        # loop whose signatures never repeat gains nothing from CUDA graphs)
        self.runs = 0
        self.replays = 0

    def signature(self, feeds: Mapping[str, Any], into: Mapping[str, Any]) -> tuple[Any, ...]:
        parts: list[Any] = []
        for name in self.contract.input_names:
            value = feeds[name]
            if isinstance(value, np.ndarray):
                parts.append(("host", value.shape, value.dtype.str))
            else:
                v = ort_value(value)
                parts.append(("device", v.data_ptr(), tuple(v.shape()), v.data_type()))
        for name in self.contract.output_names:
            if name in into:
                v = ort_value(into[name])
                parts.append(("into", name, v.data_ptr(), tuple(v.shape())))
        return tuple(parts)

    def run(
        self,
        feeds: Mapping[str, Any],
        into: Mapping[str, Any],
        regular: Callable[[Mapping[str, Any], Mapping[str, Any], Any], dict[str, Any]],
    ) -> dict[str, Any]:
        """Outputs of one run; ``regular(feeds, into, run_options)`` runs without fixed buffers."""
        with self.gate.shared():
            key = self.signature(feeds, into)
            capture = self.captures.get(key)
            self.runs += 1
            if capture is not None:
                self.replays += 1
                for name, value in capture.host_inputs.items():
                    _update(value, feeds[name])
                self.session.run_with_iobinding(capture.binding, self.run_options(capture.graph_id))
                return dict(capture.outputs)
            seen = self.pending.pop(key, None)
            if seen is None:  # new (or not seen recently): runs as it is; its outputs are kept
                result = regular(feeds, into, self.run_options(-1))
                self._keep(key, _Pending(result, 1))
                return result
            full = len(self.captures) >= MAX_GRAPHS
            if seen.sightings < CAPTURE_AT - 1 or full:
                if full and not self._full_logged:
                    log.info("%s: %d captured graphs; further shapes run uncaptured",
                             self.contract.name, MAX_GRAPHS)  # fmt: skip
                    self._full_logged = True
                # into the buffers of its first run, so that what reads them sees the same buffers
                result = regular(feeds, {**seen.outputs, **into}, self.run_options(-1))
                self._keep(key, _Pending(result, seen.sightings + 1))
                return result
        # ONNX Runtime captures in the first run with a new graph id, in global capture mode:
        # no other thread's device work may overlap it
        with self.gate.exclusive():
            capture = self.captures[key] = self._prepare(feeds, into, seen.outputs)
            self.session.run_with_iobinding(capture.binding, self.run_options(capture.graph_id))
        return dict(capture.outputs)

    def _keep(self, key: tuple[Any, ...], pending: _Pending) -> None:
        """Remember ``key`` as the most recent uncaptured signature (at most ``MAX_PENDING``)."""
        self.pending[key] = pending
        while len(self.pending) > MAX_PENDING:
            self.pending.pop(next(iter(self.pending)))

    def _prepare(
        self, feeds: Mapping[str, Any], into: Mapping[str, Any], first: Mapping[str, Any]
    ) -> Capture:
        """Buffers for a signature seen before: a device copy of each host feed, the device
        feeds as they are (the same buffers, by the signature), and as outputs the values its
        first run wrote (``first``) or the caller's ``into`` values."""
        binding = self.session.io_binding()
        host_inputs: dict[str, Any] = {}
        bound: list[Any] = []
        for name in self.contract.input_names:
            value = feeds[name]
            if isinstance(value, np.ndarray):  # a buffer of our own: the caller's may change
                value = host_inputs[name] = self.upload(np.array(value, copy=True))
            binding.bind_ortvalue_input(name, ort_value(value))
            bound.append(value)
        outputs: dict[str, Any] = {}
        for name in self.contract.output_names:
            outputs[name] = into[name] if name in into else first[name]
            binding.bind_ortvalue_output(name, ort_value(outputs[name]))
        graph_id = len(self.captures) + 1  # 0 is ONNX Runtime's default id, -1 no capture
        log.debug("%s: graph id %d", self.contract.name, graph_id)
        return Capture(graph_id, binding, host_inputs, outputs, bound)


def _update(value: Any, array: np.ndarray) -> None:
    """Copy ``array`` into the fixed buffer ``value`` (same shape and dtype, by its signature)."""
    host = getattr(value, "host", None)
    if host is not None:  # a CPU value wrapping numpy memory
        np.copyto(host, array)
    else:
        value.update_inplace(np.ascontiguousarray(array))
