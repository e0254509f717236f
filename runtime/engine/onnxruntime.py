"""ONNX Runtime as an engine: providers with options, I/O binding, device-resident ``OrtValue``s.

Why I/O binding: with plain ``InferenceSession.run`` every input and output crosses to and from
numpy, so on a GPU the image features, the memory pools and the masks would travel over PCIe
several times per frame. Bound ``OrtValue``s stay on the session's device; on the CPU they wrap
numpy memory without copies, so the same code path is what CI tests.

Why providers are checked first: ONNX Runtime silently falls back to the CPU when a requested
provider is not in the installed build (``onnxruntime`` instead of ``onnxruntime-gpu``); a warning
names the missing provider and the package that brings it, then what the session really uses is
checked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from samurai_onnx.runtime.contract import GraphContract, ort_signature
from samurai_onnx.runtime.engine.base import Engine, EngineError, EngineSettings, GraphSession
from samurai_onnx.runtime.engine.captured import CapturedRuns, ort_value
from samurai_onnx.runtime.engine.gate import DeviceGate
from samurai_onnx.runtime.host import int8_saturates_here

log = logging.getLogger(__name__)

DEVICE_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}

# Options used for a provider the bundle's target does not configure (``--device cuda`` on a cpu
# bundle): TF32 off, so fp32 graphs give fp32 results (parity with the oracle), and cuDNN's
# exhaustive algorithm search, which the fixed shapes of a video amortise after the first frame.
DEFAULT_PROVIDER_OPTIONS: dict[str, dict[str, Any]] = {
    "CUDAExecutionProvider": {"use_tf32": 0, "cudnn_conv_algo_search": "EXHAUSTIVE"},
}

_INSTALL_HINT = {
    "CUDAExecutionProvider": "install onnxruntime-gpu (pip install 'samurai-onnx[gpu]') and CUDA",
    "TensorrtExecutionProvider": "install onnxruntime-gpu with TensorRT libraries on the path",
}
_VALUE_DEVICE = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}


def providers_for_device(
    device: str | None,
    target_providers: Sequence[str] = ("CPUExecutionProvider",),
    target_options: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[tuple[str, dict[str, Any]], ...]:
    """(provider, options) pairs for ``--device`` (None: the target's own providers).

    Options come from the target manifest where it names the provider, else from
    ``DEFAULT_PROVIDER_OPTIONS``; ``--device`` only chooses which providers are used.
    """
    if device is None:
        names = tuple(target_providers) or ("CPUExecutionProvider",)
    else:
        try:
            names = DEVICE_PROVIDERS[device]
        except KeyError:
            raise ValueError(
                f"unknown device {device!r}; use one of {', '.join(DEVICE_PROVIDERS)}"
            ) from None
    options = target_options or {}
    return tuple((p, dict(options.get(p, DEFAULT_PROVIDER_OPTIONS.get(p, {})))) for p in names)


def resolve_providers(
    requested: Sequence[tuple[str, dict[str, Any]]],
) -> list[tuple[str, dict[str, Any]]]:
    """Keep the available providers of ``requested`` (in order), warning about each missing one."""
    available = set(ort.get_available_providers())
    chosen = [(p, o) for p, o in requested if p in available]
    for p, _ in requested:
        if p not in available:
            log.warning(
                "%s is not available in this onnxruntime build (%s); falling back to %s",
                p,
                _INSTALL_HINT.get(p, "install an onnxruntime build that has it"),
                ", ".join(n for n, _ in chosen) or "CPUExecutionProvider",
            )
    if all(p != "CPUExecutionProvider" for p, _ in chosen):
        chosen.append(("CPUExecutionProvider", {}))
    return chosen


def _option_text(key: str, value: Any) -> str:
    """ONNX Runtime takes provider options as strings; booleans as 1/0; ``~`` in paths expanded.

    Cache paths (TensorRT's engine and timing caches) point outside the bundle on purpose: a
    bundle directory may be read-only and is verified by its hashes.
    """
    if isinstance(value, bool):
        return "1" if value else "0"
    if key.endswith("_path"):
        path = os.path.expanduser(str(value))
        os.makedirs(path, exist_ok=True)
        return path
    return str(value)


def session_options(
    threads: int | None = None,
    *,
    profile_prefix: str | None = None,
    optimize: bool = True,
    exact_int8: bool = True,
) -> Any:
    """Session options used for every graph: full graph optimization (``optimize=False``: none,
    for telling a fusion's numbers from a kernel's), ``threads`` intra-op.

    ``session.force_spinning_stop``: each session has its own intra-op thread pool, whose threads
    by default spin for a while after a run, so with a tracker's seven sessions the graph that
    runs next shares the cores with the previous graph's spinning threads. Stopping the spin at
    the end of each run (threads still spin between a run's parallel sections) made the tracking
    loop 1.6-2x faster at 256 pixels (0.24-0.31 s against 0.48-0.51 s a frame) and no slower at
    1024 (8.20, 8.31, 8.45 s against 8.12, 8.69, 9.12 s, alternating runs), one object, steady
    state, 2 threads on a 2-core AMD EPYC (README "Speed").

    On x86 CPUs without VNNI or AMX (``host.u8s8_saturates``), ``session.x64quantprecision``:
    ONNX Runtime then rewrites constant int8 weights as uint8 (a graph optimization, so not with
    ``optimize=False``) and runs its exact uint8 x uint8 kernels instead of the saturating
    uint8 x int8 ones. Not set on VNNI/AMX CPUs, where the uint8 x int8 kernels are exact and
    faster (ONNX Runtime would rewrite there too). ``exact_int8=False`` leaves it out (see
    ``create_session``).
    """
    opts = ort.SessionOptions()
    precise = exact_int8 and int8_saturates_here()
    if precise:
        opts.add_session_config_entry("session.x64quantprecision", "1")
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if optimize
        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.force_spinning_stop", "1")
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    # errors only; fatal only where the exact int8 path is on: a graph it cannot rewrite is
    # retried without it (create_session), and ONNX Runtime's own error line would only repeat
    # the warning given then
    opts.log_severity_level = 4 if precise else 3
    return opts


def create_session(
    path: str | Path | bytes,
    providers: Sequence[str] | Sequence[tuple[str, dict[str, Any]]] = ("CPUExecutionProvider",),
    threads: int | None = None,
    *,
    profile_prefix: str | None = None,
    optimize: bool = True,
) -> ort.InferenceSession:
    """An ``InferenceSession`` for ``path`` (or a serialized model) on the best available of
    ``providers``.

    ``providers`` are names or (name, options) pairs; the session's errors are ONNX Runtime's
    own (the compiler's checks want them raw; ``OrtEngine`` translates them).
    """
    pairs = [(p, {}) if isinstance(p, str) else (p[0], dict(p[1])) for p in providers]
    chosen = resolve_providers(pairs)

    def open_session(exact_int8: bool) -> ort.InferenceSession:
        return ort.InferenceSession(
            path if isinstance(path, bytes) else str(path),
            sess_options=session_options(
                threads, profile_prefix=profile_prefix, optimize=optimize, exact_int8=exact_int8
            ),
            providers=[p for p, _ in chosen],
            provider_options=[{k: _option_text(k, v) for k, v in o.items()} for _, o in chosen],
        )

    try:
        session = open_session(True)
    except Exception as exc:  # ONNX Runtime's own exception types are not importable by name
        if not (int8_saturates_here() and _SHARED_INT8_WEIGHT in str(exc)):
            raise
        # int8 weights shared by two matmuls, as bundles compiled before the quantize pass gave
        # each its own copy (compiler/passes/quantize.py) have them: ONNX Runtime's exact path
        # cannot rewrite them. Run as before, saturating, and say how to fix it.
        log.warning(
            "%s: int8 weights shared between matmuls (a bundle compiled by an older "
            "samurai-compile) keep ONNX Runtime's exact int8 path off, so its int8 products may "
            "saturate on this CPU (no VNNI/AMX); recompile the bundle with samurai-compile",
            "a model" if isinstance(path, bytes) else Path(path).name,
        )
        session = open_session(False)
    used = session.get_providers()
    if chosen[0][0] != "CPUExecutionProvider" and used[0] != chosen[0][0]:
        log.warning(
            "%s could not be initialised for %s; running on %s instead",
            chosen[0][0],
            "a model" if isinstance(path, bytes) else Path(path).name,
            used[0],
        )
    return session


# ONNX Runtime's load error where its exact int8 path meets a weight shared by two matmuls.
_SHARED_INT8_WEIGHT = "Attempt to replace the existing tensor"


def one_line(exc: BaseException) -> str:
    """An ONNX Runtime message (often several lines with a stack) reduced to its first line."""
    text = str(exc).strip()
    return text.splitlines()[0][:400] if text else type(exc).__name__


class HostBacked:
    """An ``OrtValue`` on the CPU that wraps numpy memory, with that numpy array kept alive.

    ``OrtValue.ortvalue_from_numpy`` does not own or reference the array it wraps: if the array
    is freed, the value points at freed memory. Holding both together makes uploads on the CPU
    free of copies and safe.
    """

    __slots__ = ("host", "value")

    def __init__(self, host: np.ndarray, value: Any) -> None:
        self.host, self.value = host, value


class OrtGraphSession(GraphSession):
    """One graph in ONNX Runtime, run through I/O binding on the engine's device.

    ``fixed``: inputs and outputs in fixed buffers per signature (``captured.py``), as CUDA
    graphs need; ``graph_ids``: runs carry ONNX Runtime's ``gpu_graph_id`` (CUDA graphs on).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        contract: GraphContract,
        path: Path,
        engine: OrtEngine,
        *,
        fixed: bool = False,
        graph_ids: bool = False,
    ) -> None:
        super().__init__(contract, path)
        self.session = session
        self.engine = engine
        self.graph_ids = graph_ids
        self.captured = (
            CapturedRuns(session, contract, engine.upload, self._run_options, engine.gate)
            if fixed
            else None
        )

    def replay_counts(self) -> tuple[int, int, int] | None:
        if self.captured is None or not self.graph_ids:
            return None
        return self.captured.replays, self.captured.runs, len(self.captured.captures)

    def _run_options(self, graph_id: int) -> Any:
        if not self.graph_ids:
            return None
        options = ort.RunOptions()
        options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return options

    def _run(self, feeds: Mapping[str, Any], into: Mapping[str, Any]) -> dict[str, Any]:
        try:
            if self.captured is not None:
                return self.captured.run(feeds, into, self._regular)
            # never ONNX Runtime's default graph id 0, which would capture whatever is bound
            with self.engine.gate.shared():
                return self._regular(feeds, into, self._run_options(-1))
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise EngineError(
                f"{self.contract.name}: ONNX Runtime failed ({one_line(exc)})"
            ) from None

    def _regular(
        self, feeds: Mapping[str, Any], into: Mapping[str, Any], run_options: Any
    ) -> dict[str, Any]:
        """One run with the feeds bound as they are and new outputs (or ``into``'s)."""
        binding = self.session.io_binding()
        device, device_id = self.engine.device, 0
        uploaded = []  # numpy feeds wrapped for this run: alive until it returns
        for name in self.contract.input_names:
            value = feeds[name]
            if isinstance(value, np.ndarray):
                value = self.engine.upload(value)
                uploaded.append(value)
            binding.bind_ortvalue_input(name, ort_value(value))
        for name in self.contract.output_names:
            if name in into:
                binding.bind_ortvalue_output(name, ort_value(into[name]))
            else:
                binding.bind_output(name, device, device_id)
        self.session.run_with_iobinding(binding, run_options)
        values = binding.get_outputs()
        # Outputs written into given values come back as those values (which own their memory).
        return {
            name: into.get(name, value)
            for name, value in zip(self.contract.output_names, values, strict=True)
        }


class OrtEngine(Engine):
    """ONNX Runtime with the providers (and their options) of ``EngineSettings``."""

    name = "onnxruntime"

    def __init__(self, settings: EngineSettings, *, fixed_buffers: bool | None = None) -> None:
        """``fixed_buffers``: run every graph with fixed buffers per signature (None: where CUDA
        graphs are on, i.e. the CUDA provider leads and has ``enable_cuda_graph``)."""
        self.settings = settings
        self.providers = resolve_providers(settings.providers)
        self.device = _VALUE_DEVICE.get(self.providers[0][0], "cpu")
        first, options = self.providers[0]
        self.cuda_graph = first == "CUDAExecutionProvider" and _option_text(
            "enable_cuda_graph", options.get("enable_cuda_graph", 0)
        ) not in ("0", "false", "False", "")
        self.fixed_buffers = self.cuda_graph if fixed_buffers is None else fixed_buffers
        self.uncaptured: list[str] = []  # graphs ONNX Runtime would not capture (see load)
        # device work of every thread shared, CUDA-graph captures alone (gate.py)
        self.gate = DeviceGate()

    def load(self, path: Path, contract: GraphContract) -> OrtGraphSession:
        refused = False  # ONNX Runtime would not capture this graph: it runs as before
        try:
            try:
                session = self._session(path, self.providers)
            except Exception as exc:
                text = str(exc).lower()
                if not self.cuda_graph or (
                    "cuda graph" not in text and "graph capture" not in text
                ):
                    raise
                # e.g. a node ONNX Runtime keeps on the CPU: this graph runs without one
                log.warning("%s: no CUDA graph (%s)", path.name, one_line(exc))
                self.uncaptured.append(path.stem)
                refused = True
                first, options = self.providers[0]
                options = {k: v for k, v in options.items() if k != "enable_cuda_graph"}
                session = self._session(path, [(first, options), *self.providers[1:]])
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise
            raise EngineError(
                f"{path.name}: ONNX Runtime cannot load the graph ({one_line(exc)})"
            ) from None
        contract.check(*ort_signature(session))
        used = session.get_providers()[0]
        if _VALUE_DEVICE.get(used, "cpu") != self.device:
            log.warning("%s runs on %s, not on %s", path.name, used, self.device)
        return OrtGraphSession(
            session,
            contract,
            path,
            self,
            fixed=self.fixed_buffers and not refused,
            graph_ids=self.cuda_graph and not refused,
        )

    def _session(
        self, path: Path, providers: Sequence[tuple[str, dict[str, Any]]]
    ) -> ort.InferenceSession:
        return create_session(
            path, providers, self.settings.threads, profile_prefix=self.settings.profile_prefix
        )

    def upload(self, array: np.ndarray) -> Any:
        array = np.ascontiguousarray(array)
        with self.gate.shared():
            value = ort.OrtValue.ortvalue_from_numpy(array, self.device, 0)
        # On the CPU the value wraps the array's memory; elsewhere it holds a copy.
        return HostBacked(array, value) if self.device == "cpu" else value

    def download(self, value: Any) -> np.ndarray:
        if isinstance(value, np.ndarray):
            return value
        if isinstance(value, HostBacked):
            # fixed buffers are rewritten by the graph's next run with the same signature
            return value.host.copy() if self.fixed_buffers else value.host
        # A view that keeps the value's buffer alive on the CPU; a copy from a GPU.
        with self.gate.shared():
            array = np.asarray(value.numpy())
        return array.copy() if self.fixed_buffers and self.device == "cpu" else array

    def zeros(self, shape: Sequence[int], dtype: str) -> Any:
        return self.upload(np.zeros(tuple(shape), np.dtype(dtype)))

    def describe(self) -> str:
        names = ", ".join(p for p, _ in self.providers)
        threads = f", threads {self.settings.threads}" if self.settings.threads else ""
        mode = "; fixed buffers" if self.fixed_buffers else ""
        if self.cuda_graph:
            refused = f" except {', '.join(self.uncaptured)}" if self.uncaptured else ""
            mode = f"; CUDA graphs{refused}"
        if int8_saturates_here():  # which int8 kernels run (session_options)
            mode += "; int8 products exact (uint8 x uint8: no VNNI/AMX)"
        return f"onnxruntime {ort.__version__} ({names}), values on {self.device}{threads}{mode}"
