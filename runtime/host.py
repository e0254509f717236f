"""Facts about the machine a bundle runs on, and where samurai-onnx keeps per-user caches.

One definition each: the CPU's flags decide OpenVINO's precision (``engine/openvino.py``), name
the machine in every bench report (``compiler/evaluate/bench.py``) and key the cached choice of
graph forms (``engine/forms.py``); the cache folder holds downloaded checkpoints (compiler),
OpenVINO's compiled models and those choices.
"""

from __future__ import annotations

import functools
import os
import platform
from pathlib import Path

# The ISA flags that decide CPU speed here (bf16 and int8 matmuls need them).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str] | None:
    """The CPU's feature flags from ``/proc/cpuinfo`` (None where there is no such file)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return set()


def isa_flags(cpuinfo: Path = CPUINFO) -> list[str]:
    """Which of ``ISA_FLAGS`` this CPU has, in that order."""
    have = cpu_flags(cpuinfo) or set()
    return [f for f in ISA_FLAGS if f in have]


def cpu_name(cpuinfo: Path = CPUINFO) -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def machine() -> str:
    """One line naming the machine: CPU, cores, OS and the ISA flags that matter (read once per
    process: each graph with several forms keys its cached choice by it)."""
    flags = " ".join(isa_flags()) or "none of " + " ".join(ISA_FLAGS)
    return (
        f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"ISA: {flags}"
    )


def cache_root() -> Path:
    """``$SAMURAI_ONNX_CACHE``, else ``~/.cache/samurai-onnx``."""
    return Path(os.environ.get("SAMURAI_ONNX_CACHE") or Path.home() / ".cache" / "samurai-onnx")
