"""scripts/gpu_diagnose.py as a CPU dry run: every step runs and the report says what it found."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


def test_dry_run_reports_parity_timing_profile_and_tracking(
    tiny256_bundle: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from conftest import oracle_available

    from scripts import gpu_diagnose

    out = tmp_path / "diag"
    argv = [
        "gpu_diagnose.py", str(tiny256_bundle), "--out", str(out), "--device", "cpu",
        "--graphs", "memory_encoder,postprocess", "--repeats", "1", "--frames", "2",
        "--tolerance", "-1",  # every graph "over tolerance": the node-level comparison runs too
    ]  # fmt: skip
    if oracle_available():  # the reference's operators for the same graph
        argv += ["--checkpoint", str(tiny_checkpoint)]
    monkeypatch.setattr(sys, "argv", argv)
    gpu_diagnose.main()
    report = json.loads((out / "diagnose.json").read_text())
    enc = report["graphs"]["memory_encoder"]
    # CPU against CPU: the same numbers, node by node
    assert max(enc["parity"]["optimized"].values()) == 0.0
    assert enc["parity"]["worst_nodes"] and all(
        n["rel_error"] == 0.0 for n in enc["parity"]["worst_nodes"]
    )
    # the dense rewrite of the fuser's depthwise convolutions gives the same memories; the graphs
    # specialised to the feeds' shapes (onnxsim's folding) too, up to fp32 rounding, which can
    # move a memory by one bfloat16 step (2**-8 of its value at most)
    assert enc["dense_depthwise_cpu_error"] == 0.0
    for variant in ("static", "dense_depthwise+static"):
        assert enc[f"{variant}_cpu_error"] <= 2**-8, variant
    assert set(enc["ms"]) == {"target", "dense_depthwise", "static", "dense_depthwise+static"}
    assert set(report["graphs"]["postprocess"]["ms"]) == {"target"}  # parity only, as it is
    assert all(isinstance(v, float) and v > 0 for v in enc["ms"].values())
    ops = dict(enc["profile"]["ms_per_run_by_op"])
    assert "Conv" in ops
    assert report["end_to_end"]["iou_cpu_vs_device"] == [1.0, 1.0]
    assert "| memory_encoder |" in (out / "diagnose.md").read_text()
    if oracle_available():
        ops = [name for name, ms in report["torch_profile"]["memory_encoder"]]
        assert any("conv" in name for name in ops), ops


def test_node_times_profile_every_graph_and_form_after_the_first_run(
    tiny256_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--node-times``: only the profiles, each over the runs after the first (which carries
    cuDNN's algorithm search on a GPU), with CUDA launches blocking (set before any session)."""
    import os

    from scripts import gpu_diagnose

    out = tmp_path / "nodes"
    argv = ["gpu_diagnose.py", str(tiny256_bundle), "--out", str(out), "--device", "cpu",
            "--graphs", "memory_encoder,mask_decoder", "--node-times"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.delenv("CUDA_LAUNCH_BLOCKING", raising=False)
    gpu_diagnose.main()
    assert os.environ.pop("CUDA_LAUNCH_BLOCKING") == "1"
    report = json.loads((out / "nodes.json").read_text())
    assert report["launch_blocking"] and set(report["graphs"]) == {"memory_encoder", "mask_decoder"}
    for p in report["graphs"].values():
        # the nodes' times are those of the kept runs only: never more than the runs took (both
        # means: the median run can be shorter than the mean where one run was slow)
        assert 0 < p["ms_in_nodes"] <= p["ms_per_run_mean"] * 1.01 + 0.01
        assert dict(p["ms_per_run_by_op"])
    assert not (out / "diagnose.json").exists()  # nothing else ran
    assert "| memory_encoder |" in (out / "nodes.md").read_text()
