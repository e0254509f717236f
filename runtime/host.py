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
ISA_FLAGS = (
    "avx2", "avx512f", "avx_vnni", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8",
)  # fmt: skip
# x86 CPUs on which ONNX Runtime's uint8 x int8 products are exact: their kernels accumulate in
# 32 bits (VNNI's vpdpbusd, AMX tiles). Without them (AVX2, AVX512 without VNNI) MLAS sums each
# pair of products in 16 bits with saturation (vpmaddubsw): a pair above 32767 is clamped.
EXACT_INT8_FLAGS = ("avx_vnni", "avx512_vnni", "amx_int8")
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")
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


def u8s8_saturates(flags: set[str] | None, arch: str | None = None) -> bool:
    """Whether ONNX Runtime's uint8 x int8 matmuls may saturate on this CPU (see
    ``EXACT_INT8_FLAGS``): x86 without VNNI or AMX. Unknown flags on x86 (no ``/proc/cpuinfo``)
    count as saturating, so that int8 stays exact where it cannot be told.

    Why it matters: measured on an AMD EPYC with AVX2 only, ``MatMulInteger`` of uniform uint8
    and int8 data was off by up to 23% of its largest output; the int8 weights of an int8 bundle
    and the ``int8attn`` form's scores are such products.
    """
    machine = (arch if arch is not None else platform.machine()).lower()
    if machine not in _X86:
        return False  # ARM's dot-product kernels (sdot/udot, i8mm) accumulate in 32 bits
    return flags is None or not any(f in flags for f in EXACT_INT8_FLAGS)


@functools.cache
def int8_saturates_here() -> bool:
    """``u8s8_saturates`` for this machine (read once per process)."""
    return u8s8_saturates(cpu_flags())


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
