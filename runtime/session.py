"""ONNX Runtime sessions: the one place where providers, threads and graph optimization are set.

Why one helper: ONNX Runtime silently falls back to the CPU when a requested provider is not
installed (e.g. ``onnxruntime`` instead of ``onnxruntime-gpu``), so a user asking for CUDA gets
CPU speed without knowing. ``create_session`` checks the request against
``onnxruntime.get_available_providers()`` first and logs a warning naming the missing provider
and the package that provides it, then checks what the session really uses.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import onnxruntime as ort

log = logging.getLogger(__name__)

DEVICE_PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}

_INSTALL_HINT = {
    "CUDAExecutionProvider": "install onnxruntime-gpu (pip install 'samurai-onnx[gpu]') and CUDA",
    "TensorrtExecutionProvider": "install onnxruntime-gpu with TensorRT libraries on the path",
}


def providers_for_device(device: str) -> tuple[str, ...]:
    """Execution providers, in preference order, for ``--device cpu|cuda|tensorrt``."""
    try:
        return DEVICE_PROVIDERS[device]
    except KeyError:
        raise ValueError(
            f"unknown device {device!r}; use one of {', '.join(DEVICE_PROVIDERS)}"
        ) from None


def resolve_providers(requested: tuple[str, ...] | list[str]) -> list[str]:
    """Keep the available providers of ``requested`` (in order), warning about each missing one."""
    available = set(ort.get_available_providers())
    chosen = [p for p in requested if p in available]
    for p in requested:
        if p not in available:
            log.warning(
                "%s is not available in this onnxruntime build (%s); falling back to %s",
                p,
                _INSTALL_HINT.get(p, "install an onnxruntime build that has it"),
                ", ".join(chosen) or "CPUExecutionProvider",
            )
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def session_options(threads: int | None = None, *, profile_prefix: str | None = None) -> Any:
    """Session options used for every graph: full graph optimization, ``threads`` intra-op."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    if profile_prefix:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    opts.log_severity_level = 3
    return opts


def create_session(
    path: str | Path,
    providers: tuple[str, ...] | list[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    *,
    profile_prefix: str | None = None,
) -> ort.InferenceSession:
    """An ``InferenceSession`` for ``path`` on the best available of ``providers``."""
    chosen = resolve_providers(providers)
    session = ort.InferenceSession(
        str(path),
        sess_options=session_options(threads, profile_prefix=profile_prefix),
        providers=chosen,
    )
    used = session.get_providers()
    if chosen and chosen[0] != "CPUExecutionProvider" and used[0] != chosen[0]:
        log.warning(
            "%s could not be initialised for %s; running on %s instead",
            chosen[0],
            Path(path).name,
            used[0],
        )
    return session
