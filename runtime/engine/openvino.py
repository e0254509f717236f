"""OpenVINO as an engine: the bundle's ONNX files compiled for Intel CPUs, bf16 where it pays.

Why a second engine: on Intel CPUs with AMX, OpenVINO runs an fp32 graph's matmuls and attention
in bf16 (``INFERENCE_PRECISION_HINT``) on the AMX tiles with fp32 accumulation; ONNX Runtime's
CPU kernels have no bf16 path. OpenVINO reads the ``cpu`` target's ONNX files as
they are, including ONNX Runtime's fused ``com.microsoft.MultiHeadAttention`` (it becomes its own
ScaledDotProductAttention), with dynamic shapes (objects, memories, pointers, frame size).

Values are numpy arrays on the host. Inputs are wrapped as ``ov.Tensor``s sharing the arrays'
memory; outputs named in ``into`` are written by OpenVINO straight into the given arrays (the
memory pools' spare buffers); every other output is copied out of the infer request, because
the request reuses its output memory on its next run while the tracker may still hold the
previous value (features, candidates).

Only this module imports ``openvino``; ``create_engine`` imports it lazily, so the runtime works
without it and says how to install it when a bundle needs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from samurai_onnx.runtime.contract import MODEL_GRAPHS, ContractError, GraphContract, TensorSpec
from samurai_onnx.runtime.engine.base import Engine, EngineError, EngineSettings, GraphSession
from samurai_onnx.runtime.host import cpu_flags

try:
    import openvino as ov
except ImportError as exc:  # pragma: no cover - exercised where openvino is absent
    raise ImportError(
        f"OpenVINO is not installed ({exc}); pip install 'samurai-onnx[openvino]'"
    ) from None

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "bf16", "f32")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
DEFAULT_CACHE_DIR = "~/.cache/samurai-onnx/openvino"
# CPU flags that mean bfloat16 arithmetic in hardware (AMX tiles, or AVX-512 dot products);
# without either, OpenVINO emulates bf16.
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
AMX_FLAG = "amx_bf16"

# OpenVINO element types by our dtype names (runtime/contract.py).
_DTYPES = {"f32": "float32", "f16": "float16", "i64": "int64", "u8": "uint8", "boolean": "bool"}


@dataclass(frozen=True)
class OpenVinoOptions:
    """The target's ``engine_options`` for OpenVINO, checked.

    ``precision``: ``auto`` (bf16 where the CPU has AMX, else f32: see ``resolve_precision``),
    ``bf16`` or ``f32``;
    ``performance_hint``: ``LATENCY`` (one request at a time, what a tracking loop does) or
    ``THROUGHPUT``; ``cache_dir``: where compiled models are cached (``~`` expanded; outside the
    bundle, which may be read-only and is verified by its hashes), None to disable.
    """

    precision: str = "auto"
    performance_hint: str = "LATENCY"
    cache_dir: str | None = DEFAULT_CACHE_DIR

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> OpenVinoOptions:
        """Options from a target manifest; a one-line ``EngineError`` for anything unknown."""
        allowed = ("precision", "performance_hint", "cache_dir")
        unknown = sorted(str(k) for k in options if k not in allowed)
        if unknown:
            raise EngineError(
                f"unknown OpenVINO engine option(s) {', '.join(unknown)}; "
                f"allowed: {', '.join(allowed)}"
            )
        precision = options.get("precision", "auto")
        if precision not in PRECISIONS:
            raise EngineError(
                f"OpenVINO precision {precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        hint = options.get("performance_hint", "LATENCY")
        if not isinstance(hint, str) or hint.upper() not in PERFORMANCE_HINTS:
            raise EngineError(
                f"OpenVINO performance_hint {hint!r} is not one of {', '.join(PERFORMANCE_HINTS)}"
            )
        cache = options.get("cache_dir", DEFAULT_CACHE_DIR)
        if cache is not None and (not isinstance(cache, str) or not cache.strip()):
            raise EngineError(
                f"OpenVINO cache_dir {cache!r}: expected a folder path, or null for no cache"
            )
        return cls(str(precision), hint.upper(), cache)


def resolve_precision(precision: str, flags: Iterable[str] | None) -> str:
    """``bf16`` or ``f32`` for the option ``precision`` on a CPU with ``flags`` (None: unknown).

    ``auto`` is bf16 iff the CPU has AMX (``amx_bf16``). Measured on an Intel Xeon with
    AVX512_BF16 but no AMX (2 threads, OpenVINO 2026.4, tiny): bf16 was slower than f32 (image
    encoder 6.3 s vs 4.7 s, memory attention 6.6 s vs 4.9 s), so AVX512_BF16 alone does not make
    bf16 the faster choice; ``precision: bf16`` still forces it. Where the flags cannot be read
    (not Linux), ``auto`` is f32.
    """
    if precision != "auto":
        return precision
    return "bf16" if flags is not None and AMX_FLAG in set(flags) else "f32"


def plugin_runs_bf16(core: Any) -> bool:
    """Whether OpenVINO's CPU plugin runs bf16 on this CPU (its ``OPTIMIZATION_CAPABILITIES``
    list BF16: natively with AVX512_BF16/AMX, emulated on other AVX512 CPUs). Where they do not
    (AVX2 only), a bf16 precision hint compiles to f32 without a word: measured on an AVX2-only
    AMD EPYC (OpenVINO 2026.4.1), the compiled model reported f32."""
    return "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def one_line(exc: BaseException) -> str:
    """An OpenVINO message (``Exception from src/...`` lines, then the cause) as one line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from ", "Check '"))]
    text = (useful or lines or [type(exc).__name__])[0]
    return text[:400]


def signature(
    compiled: Any, contract: GraphContract | None = None
) -> tuple[list[tuple[str, str, list[Any]]], ...]:
    """(name, dtype, shape) of a compiled model's inputs and outputs; dynamic axes as ``"?"``.

    A port can carry several tensor names (an output that is also an intermediate tensor of the
    graph); the one the contract expects at that position is used when the port has it.
    """

    def rows(ports: Any, expected: Sequence[str]) -> list[tuple[str, str, list[Any]]]:
        out = []
        for i, port in enumerate(ports):
            names = port.get_names()
            want = expected[i] if i < len(expected) else ""
            name = want if want in names else (sorted(names)[0] if names else "")
            kind = port.get_element_type().get_type_name()
            dims = [d.get_length() if d.is_static else "?" for d in port.get_partial_shape()]
            out.append((name, _DTYPES.get(kind, kind), dims))
        return out

    ins = contract.input_names if contract else ()
    outs = contract.output_names if contract else ()
    return rows(compiled.inputs, ins), rows(compiled.outputs, outs)


def check_contract(contract: GraphContract, compiled: Any) -> list[TensorSpec]:
    """Check a compiled model against ``contract``; returns the outputs to check after each run.

    Inputs are the ONNX file's declarations and are checked as the ONNX Runtime engine does.
    OpenVINO infers output shapes itself and may leave a size dynamic that the file fixes (the
    mask decoder's 4 candidates): names, dtypes and ranks are checked here, and a fixed size that
    OpenVINO leaves open is checked on every run's result instead (``ContractError`` if it
    differs), so a wrong graph still fails on its first run.
    """
    inputs, outputs = signature(compiled, contract)
    later: list[TensorSpec] = []
    known = []
    for name, dtype, dims in outputs:
        spec = next((o for o in contract.outputs if o.name == name), None)
        if spec is not None and len(dims) == len(spec.shape):
            open_fixed = [
                isinstance(w, int) and not isinstance(g, int)
                for w, g in zip(spec.shape, dims, strict=True)
            ]
            if any(open_fixed):
                later.append(spec)
                dims = [w if o else g for w, g, o in zip(spec.shape, dims, open_fixed, strict=True)]
        known.append((name, dtype, dims))
    contract.check(inputs, known)
    return later


def unsupported(model: Any) -> str | None:
    """Why OpenVINO's CPU plugin would compute ``model`` differently from ONNX, or None.

    Measured with OpenVINO 2026.4: the CPU plugin ignores ``antialias`` (and ``exclude_outside``)
    of ONNX ``Resize``. A cubic 1280x720 -> 1024 downscale differs from ONNX Runtime by up to 60
    of 255 levels, an antialiased linear one of a 0/1 mask by up to 0.76. The ``preprocess``
    (PIL's resize) and ``mask_prompt`` (PyTorch's antialiased interpolation) graphs rely on it.
    """
    for op in model.get_ops():
        if op.get_type_name() == "Interpolate" and op.get_attributes().get("antialias"):
            return "it has an antialiased Resize, which OpenVINO's CPU plugin does not implement"
    return None


def _tensor(array: np.ndarray) -> Any:
    """An ``ov.Tensor`` sharing ``array``'s memory (C-contiguous, writable: copied otherwise)."""
    if not (array.flags.c_contiguous and array.flags.writeable):
        array = np.array(array, order="C")
    return ov.Tensor(array, shared_memory=True)


class OpenVinoGraphSession(GraphSession):
    """One graph compiled for the CPU, run through infer requests.

    One request per set of ``into`` output names: a request keeps the output tensors set on it,
    so a run without ``into`` must not use a request whose outputs point at a caller's buffer.

    Static fallback: OpenVINO 2026.4's CPU plugin fuses the memory encoder's
    ``Add(conv(vision_features), conv(masks))`` into one convolution whose shape is fixed to the
    batch-1 operand, and a run with two or more objects fails (``Can not clone with new dims``);
    with the shapes made static it runs and is exact. So when a dynamic run fails, the graph is
    recompiled for the run's input shapes, and from then on for each new set of shapes (the
    tracker's shapes change only when objects are added, or pools grow); if the static run fails
    too, the error is the engine's.
    """

    def __init__(
        self,
        engine: OpenVinoEngine,
        compiled: Any,
        contract: GraphContract,
        path: Path,
        checks: Sequence[TensorSpec] = (),
    ) -> None:
        super().__init__(contract, path)
        self.engine = engine
        self.compiled = compiled
        self.static = False  # compiled per input shapes after a dynamic run failed
        self._checks = tuple(checks)  # outputs whose fixed sizes OpenVINO left open
        self._static: dict[tuple[tuple[int, ...], ...], Any] = {}
        self._requests: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._out_index = {n: i for i, n in enumerate(contract.output_names)}

    def _request(self, compiled: Any, into: tuple[str, ...]) -> Any:
        key = (id(compiled), into)
        if key not in self._requests:
            self._requests[key] = compiled.create_infer_request()
        return self._requests[key]

    def _compiled_for(self, arrays: Sequence[np.ndarray]) -> Any:
        shapes = tuple(a.shape for a in arrays)
        if shapes not in self._static:
            log.debug("%s: compiling for static shapes %s", self.contract.name, shapes)
            self._static[shapes] = self.engine.compile(self.path, self.contract, shapes)
        return self._static[shapes]

    def _run(self, feeds: Mapping[str, Any], into: Mapping[str, Any]) -> dict[str, Any]:
        unknown = [n for n in into if n not in self._out_index]
        if unknown:
            raise EngineError(
                f"{self.contract.name}: no output(s) {', '.join(unknown)} to write into"
            )
        for name, target in into.items():
            if not (isinstance(target, np.ndarray) and target.flags.c_contiguous):
                raise EngineError(
                    f"{self.contract.name}: {name} must be written into a C-contiguous numpy "
                    "array (a value from this engine's upload or zeros)"
                )
        arrays = [np.asarray(feeds[name]) for name in self.contract.input_names]
        # OpenVINO takes an input of any shape and dtype without a word (a wrong size where the
        # graph fixes one would run, and give nonsense): checked here, as ONNX Runtime does.
        for spec, array in zip(self.contract.inputs, arrays, strict=True):
            problem = spec.mismatch(str(array.dtype), list(array.shape))
            if problem:
                raise EngineError(f"{self.contract.name}: input {problem}")
        if not self.static:
            try:
                return self._infer(self.compiled, arrays, into)
            except RuntimeError as exc:
                if isinstance(exc, EngineError):
                    raise
                log.info(
                    "%s: the dynamic-shape run failed (%s); compiling it per input shapes",
                    self.contract.name,
                    one_line(exc),
                )
                try:
                    out = self._infer(self._compiled_for(arrays), arrays, into)
                except (EngineError, ContractError):
                    raise
                except RuntimeError:
                    raise self._error(exc) from None  # not a dynamic-shape problem
                self.static = True
                return out
        try:
            return self._infer(self._compiled_for(arrays), arrays, into)
        except (EngineError, ContractError):
            raise
        except RuntimeError as exc:
            raise self._error(exc) from None

    def _infer(
        self, compiled: Any, arrays: Sequence[np.ndarray], into: Mapping[str, Any]
    ) -> dict[str, Any]:
        """One run; OpenVINO's errors are raised as they are (``_run`` decides what they mean)."""
        names = tuple(n for n in self.contract.output_names if n in into)
        request = self._request(compiled, names)
        # The request holds only pointers into the arrays: the tensors (and the contiguous copies
        # ``_tensor`` may make) must stay alive until ``infer`` has returned.
        alive = [_tensor(array) for array in arrays]
        for i, tensor in enumerate(alive):
            request.set_input_tensor(i, tensor)
        for name in names:
            alive.append(ov.Tensor(into[name], shared_memory=True))
            request.set_output_tensor(self._out_index[name], alive[-1])
        request.infer()
        del alive
        out: dict[str, Any] = {}
        for i, name in enumerate(self.contract.output_names):
            if name in into:
                # OpenVINO reallocates an output whose shape differs from the given buffer's
                if not np.shares_memory(request.get_output_tensor(i).data, into[name]):
                    raise EngineError(
                        f"{self.contract.name}: {name} does not fit the given buffer "
                        f"{list(into[name].shape)}"
                    )
                out[name] = into[name]
            else:
                # a copy: the request writes its next results into the same memory
                out[name] = np.array(request.get_output_tensor(i).data, copy=True)
        for spec in self._checks:
            problem = spec.mismatch(spec.dtype, list(np.shape(out[spec.name])))
            if problem:
                raise ContractError(f"{self.contract.name}: {problem}")
        return out

    def _error(self, exc: RuntimeError) -> EngineError:
        return EngineError(f"{self.contract.name}: OpenVINO failed ({one_line(exc)})")


class DelegatedSession(GraphSession):
    """A graph run by ONNX Runtime's CPU provider, with this engine's values (numpy arrays) in
    and out; outputs named in ``into`` are copied into the given arrays."""

    def __init__(self, session: GraphSession, contract: GraphContract, path: Path) -> None:
        super().__init__(contract, path)
        self.session = session
        self.engine = getattr(session, "engine", None)

    def _run(self, feeds: Mapping[str, Any], into: Mapping[str, Any]) -> dict[str, Any]:
        out = self.session.run({n: np.asarray(feeds[n]) for n in self.contract.input_names})
        result: dict[str, Any] = {}
        for name, value in out.items():
            array = np.array(self.engine.download(value) if self.engine else value, copy=True)
            if name in into:
                if into[name].shape != array.shape:
                    raise EngineError(
                        f"{self.contract.name}: {name} {list(array.shape)} does not fit the given "
                        f"buffer {list(into[name].shape)}"
                    )
                np.copyto(into[name], array)
                array = into[name]
            result[name] = array
        return result


class OpenVinoEngine(Engine):
    """OpenVINO's CPU plugin with the target's ``engine_options`` (see ``OpenVinoOptions``).

    ``precision`` is what model graphs run at here (bf16 or f32). The pre/postprocessing graphs
    always run at f32: they hold no weights, cost little, and their outputs are pixel levels and
    thresholded masks that bf16's 8-bit mantissa would move.
    """

    name = "openvino"
    device = "cpu"

    def __init__(self, settings: EngineSettings, *, cpuinfo: Path = Path("/proc/cpuinfo")) -> None:
        self.settings = settings
        self.options = OpenVinoOptions.parse(settings.options)
        first = settings.providers[0][0] if settings.providers else "CPUExecutionProvider"
        if first != "CPUExecutionProvider":
            raise EngineError(
                f"this bundle's target runs on OpenVINO on the CPU, which cannot use {first}; "
                "run it with --device cpu (or without --device), or compile a cuda/tensorrt bundle"
            )
        self.core = ov.Core()
        flags = cpu_flags(cpuinfo)
        self.precision = resolve_precision(self.options.precision, flags)
        if flags is None:  # no /proc/cpuinfo: OpenVINO says whether bf16 is native
            capabilities = self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
            native = ["BF16"] if "BF16" in capabilities else []
        else:
            native = [f for f in NATIVE_BF16_FLAGS if f in flags]
        self.native_bf16 = ", ".join(native) or "none"
        if self.precision == "bf16" and not plugin_runs_bf16(self.core):
            log.warning(
                "OpenVINO cannot run bf16 on this CPU (its CPU plugin offers no BF16: no "
                "AVX512); it runs f32"
            )
            self.precision = "f32"
        log.info(
            "OpenVINO %s on the CPU: precision %s (option %s; native bf16: %s)",
            ov.__version__,
            self.precision,
            self.options.precision,
            self.native_bf16,
        )
        if self.precision == "bf16" and not native:
            log.warning(
                "OpenVINO runs bf16 on a CPU without native bf16 (no amx_bf16 or avx512_bf16): "
                "it is emulated and slower than f32; set engine_options.precision to f32 or auto"
            )
        self.delegated: list[str] = []  # graphs run by ONNX Runtime instead (see ``load``)
        self._ort_engine: Engine | None = None
        self.cache_dir: str | None = None
        if self.options.cache_dir:
            self.cache_dir = os.path.expanduser(self.options.cache_dir)

    def config(self, graph: str) -> dict[str, Any]:
        """The compile configuration of ``graph`` (precision: see the class docstring)."""
        precision = self.precision if graph in MODEL_GRAPHS else "f32"
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": self.options.performance_hint,
        }
        if self.settings.threads:
            config["INFERENCE_NUM_THREADS"] = int(self.settings.threads)
        if self.cache_dir:
            config["CACHE_DIR"] = self.cache_dir
        return config

    def run_precision(self, graph: str, file_precision: str) -> str:
        """An fp32 model graph runs in bf16 when this engine's precision is bf16."""
        if graph in MODEL_GRAPHS and self.precision == "bf16" and file_precision == "fp32":
            return "bf16"
        return file_precision

    def compile(
        self,
        path: Path,
        contract: GraphContract,
        shapes: Sequence[Sequence[int]] | None = None,
        model: Any = None,
    ) -> Any:
        """``path`` (or its ``model``, read already) compiled for the CPU, for the given input
        ``shapes`` (else dynamic)."""
        if self.cache_dir:
            try:
                os.makedirs(self.cache_dir, exist_ok=True)
            except OSError as exc:
                raise EngineError(
                    f"OpenVINO cache_dir {self.cache_dir}: cannot create it ({exc.strerror})"
                ) from None
        try:
            model = model if model is not None else self.core.read_model(str(path))
            if shapes is not None:
                model.reshape(
                    {
                        port: ov.PartialShape(list(s))
                        for port, s in zip(model.inputs, shapes, strict=True)
                    }
                )
            return self.core.compile_model(model, "CPU", self.config(contract.name))
        except EngineError:
            raise
        except RuntimeError as exc:
            raise EngineError(
                f"{path.name}: OpenVINO cannot load the graph ({one_line(exc)})"
            ) from None

    def load(self, path: Path, contract: GraphContract) -> GraphSession:
        """The graph compiled by OpenVINO; or, where OpenVINO would compute it differently (see
        ``unsupported``), run by ONNX Runtime's CPU provider on the same host arrays (those
        graphs are pre/postprocessing: no weights to speak of, milliseconds per frame)."""
        try:
            model = self.core.read_model(str(path))
            why = unsupported(model)
        except RuntimeError as exc:
            raise EngineError(
                f"{path.name}: OpenVINO cannot load the graph ({one_line(exc)})"
            ) from None
        if why:
            log.info("%s runs on ONNX Runtime's CPU provider: %s", path.name, why)
            self.delegated.append(contract.name)
            return DelegatedSession(self._ort().load(path, contract), contract, path)
        compiled = self.compile(path, contract, model=model)
        del model  # the compiled model holds what it needs
        checks = check_contract(contract, compiled)
        return OpenVinoGraphSession(self, compiled, contract, path, checks)

    def _ort(self) -> Engine:
        if self._ort_engine is None:
            from samurai_onnx.runtime.engine.onnxruntime import OrtEngine

            self._ort_engine = OrtEngine(EngineSettings(threads=self.settings.threads))
        return self._ort_engine

    def upload(self, array: np.ndarray) -> Any:
        # A copy, as a device upload would be: the value never aliases the caller's array (the
        # memory pools' two buffers are uploaded from one array).
        return np.array(array, order="C", copy=True)

    def download(self, value: Any) -> np.ndarray:
        return np.asarray(value)

    def zeros(self, shape: Sequence[int], dtype: str) -> Any:
        return np.zeros(tuple(shape), np.dtype(dtype))

    def describe(self) -> str:
        hint = self.options.performance_hint
        threads = self.settings.threads or "all"
        text = (
            f"openvino {ov.__version__} on the CPU, precision {self.precision} "
            f"(option {self.options.precision}, native bf16: {self.native_bf16}), "
            f"{hint}, threads {threads}"
        )
        if self.delegated:
            text += f"; {', '.join(self.delegated)} on onnxruntime (antialiased Resize)"
        return text
