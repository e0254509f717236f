"""Shared tools of the fuzz suite (``tests/test_fuzz_*.py``).

- ``fake_bundle``: a bundle whose ``bundle.yaml`` (and digest) is real but whose graphs are a few
  bytes each, so that every check up to session creation runs in milliseconds without a compiled
  model; creating sessions from it fails with a one-line ``BundleError``.
- ``run_bounded``: a command line in a fresh process under an address-space limit, returning its
  exit code, output and peak RSS (``os.wait4`` of that process alone).
- ``snapshot``: the sha256 of every file under some folders, to assert that no file changed.
- ``assert_one_error``: exit code 2 and exactly one ``error:`` line, no traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from samurai_onnx.runtime.bundle import (
    COMPONENTS,
    TrackerSettings,
    sha256_file,
    write_bundle_manifest,
)
from samurai_onnx.runtime.contract import contract

RUN = [sys.executable, "-m", "samurai_onnx.runtime.cli"]
COMPILE = [sys.executable, "-m", "samurai_onnx.compiler.cli"]


def fake_header() -> dict[str, Any]:
    """bundle.yaml's top level as the compiler writes it (tiny, cpu target)."""
    return {
        "compiler_version": "0.1.0",
        "model": {"name": "tiny", "config": {"name": "tiny", "image_size": 1024}},
        "source_checkpoint": {"file": "sam2.1_hiera_tiny.pt", "sha256": "ab" * 32},
        "target": {
            "name": "cpu",
            "providers": ["CPUExecutionProvider"],
            "provider_options": {},
            "precision": "fp32",
            "quantization": "none",
            "opset": 17,
            "format": "onnx",
            "memory_shape": "dynamic",
        },
        "tracker": TrackerSettings().to_dict(),
    }


def fake_bundle(root: Path, data: dict[str, Any] | None = None) -> Path:
    """A bundle folder with placeholder graphs and a sealed bundle.yaml (``data`` overrides the
    top level; ``components`` are filled in with the placeholders' real hashes)."""
    root.mkdir(parents=True, exist_ok=True)
    components = {}
    for name in COMPONENTS:
        graph = root / f"{name}.onnx"
        graph.write_bytes(f"placeholder graph of {name}\n".encode())
        spec = contract(name, TrackerSettings().geometry)
        components[name] = {
            "file": graph.name,
            "sha256": sha256_file(graph),
            "precision": "fp32",
            "inputs": [t.to_dict() for t in spec.inputs],
            "outputs": [t.to_dict() for t in spec.outputs],
            "attention": "matmul",
            "max_abs_error": {},
            "tolerance": 0.0001,
        }
    write_bundle_manifest(root, {**fake_header(), "components": components, **(data or {})})
    return root


def snapshot(*roots: Path) -> dict[str, str]:
    """Path -> sha256 of every file under ``roots`` (folders as "<dir>")."""
    out: dict[str, str] = {}
    for root in roots:
        if root.is_file():
            out[str(root)] = hashlib.sha256(root.read_bytes()).hexdigest()
            continue
        for path in sorted(root.rglob("*")):
            out[str(path)] = (
                hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "<dir>"
            )
    return out


def assert_one_error(code: int, stderr: str, *needles: str, exit_code: int = 2) -> str:
    """Exit ``exit_code`` with exactly one non-empty stderr line, ``error: ...``, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == exit_code, (code, stderr[-2000:])
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("error: "), lines[0]
    assert len(lines[0]) <= 1200, len(lines[0])
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@dataclass
class Bounded:
    code: int
    stdout: str
    stderr: str
    peak_rss_mb: float
    seconds: float


_WRAPPER = """
import json, os, resource, subprocess, sys, time
limit, report, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
def limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
start = time.perf_counter()
child = subprocess.Popen(cmd, preexec_fn=limit_memory)
_, status, usage = os.wait4(child.pid, 0)
child.returncode = 0  # reaped here
with open(report, "w") as fh:
    json.dump({"maxrss_kb": usage.ru_maxrss, "seconds": time.perf_counter() - start}, fh)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run_bounded(
    cmd: list[str],
    *,
    limit_mb: int = 3072,
    timeout: float = 300,
    cwd: Path | None = None,
) -> Bounded:
    """``cmd`` in a fresh process with at most ``limit_mb`` of address space (an input that
    tried to exhaust memory fails there, not on the test machine); returns its peak RSS."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "usage.json"
        proc = subprocess.run(
            [sys.executable, "-c", _WRAPPER, str(limit_mb << 20), str(report), *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env={**os.environ, "COLUMNS": "120"},
        )
        usage = json.loads(report.read_text()) if report.is_file() else {}
    return Bounded(
        proc.returncode,
        proc.stdout,
        proc.stderr,
        usage.get("maxrss_kb", 0) / 1024.0,
        usage.get("seconds", float("nan")),
    )
