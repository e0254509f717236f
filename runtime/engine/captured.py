"""Fixed buffers per input signature, so that ONNX Runtime can capture a graph as a CUDA graph.

Why: on a GPU the decoder, the memory encoder and memory attention are launch-bound at batch 1
(hundreds of small kernels; the mask decoder took 3-5 ms on an H100 for ~7 GFLOP). A CUDA graph
replays all of a run's kernels with one launch. ONNX Runtime captures one when the CUDA
provider has ``enable_cuda_graph`` and a run carries a ``gpu_graph_id``, on two conditions:
every input and output is bound to the same device buffer on every replay, and the shapes do not
change. So each distinct *signature* of a run (the host feeds' shapes, the device feeds' buffers
and shapes, the buffers outputs are written into) gets, the second time it is seen, its own
graph id, a device copy of every host feed (updated in place on each run) and preallocated
outputs. A signature seen once runs as before (id -1: no capture), so the growing memory bank of
a video's first frames does not use up graph ids; in the steady state the signatures repeat
(the memory pools alternate between two buffers, so most graphs have two).

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

log = logging.getLogger(__name__)

MAX_GRAPHS = 8  # captured signatures per session (each holds its outputs and the graph's memory)
MAX_SEEN = 256  # signatures remembered before a second sighting

_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def ort_value(value: Any) -> Any:
    """The ``OrtValue`` inside an engine value (a host-backed wrapper or the value itself)."""
    return getattr(value, "value", value)


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
        zeros: Callable[[tuple[int, ...], str], Any],
        run_options: Callable[[int], Any],
    ) -> None:
        self.session = session
        self.contract = contract
        self.upload, self.zeros, self.run_options = upload, zeros, run_options
        self.seen: set[tuple[Any, ...]] = set()
        self.captures: dict[tuple[Any, ...], Capture] = {}
        self._full_logged = False

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
        key = self.signature(feeds, into)
        capture = self.captures.get(key)
        if capture is None:
            if key not in self.seen or len(self.captures) >= MAX_GRAPHS:
                if key in self.seen and not self._full_logged:
                    log.info("%s: %d captured graphs; further shapes run uncaptured",
                             self.contract.name, MAX_GRAPHS)  # fmt: skip
                    self._full_logged = True
                if len(self.seen) >= MAX_SEEN:
                    self.seen.clear()
                self.seen.add(key)
                return regular(feeds, into, self.run_options(-1))
            capture, outputs = self._prepare(feeds, into, regular)
            self.captures[key] = capture
            return outputs
        for name, value in capture.host_inputs.items():
            _update(value, feeds[name])
        self.session.run_with_iobinding(capture.binding, self.run_options(capture.graph_id))
        return dict(capture.outputs)

    def _prepare(
        self,
        feeds: Mapping[str, Any],
        into: Mapping[str, Any],
        regular: Callable[[Mapping[str, Any], Mapping[str, Any], Any], dict[str, Any]],
    ) -> tuple[Capture, dict[str, Any]]:
        """Buffers for a signature seen before, and this run's outputs: the output shapes
        come from running it as before (the next run with the signature uses the buffers)."""
        result = regular(feeds, into, self.run_options(-1))
        shapes = {
            name: (tuple(ort_value(v).shape()), ort_value(v).data_type())
            for name, v in result.items()
        }
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
            if name in into:
                outputs[name] = into[name]
            else:
                shape, kind = shapes[name]
                outputs[name] = self.zeros(shape, np.dtype(_NUMPY[kind]).str)
            binding.bind_ortvalue_output(name, ort_value(outputs[name]))
        graph_id = len(self.captures) + 1  # 0 is ONNX Runtime's default id, -1 no capture
        log.debug("%s: graph id %d for %s", self.contract.name, graph_id, shapes)
        return Capture(graph_id, binding, host_inputs, outputs, bound), result


def _update(value: Any, array: np.ndarray) -> None:
    """Copy ``array`` into the fixed buffer ``value`` (same shape and dtype, by its signature)."""
    host = getattr(value, "host", None)
    if host is not None:  # a CPU value wrapping numpy memory
        np.copyto(host, array)
    else:
        value.update_inplace(np.ascontiguousarray(array))
