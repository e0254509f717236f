"""scripts/target_variant.py: the target variants gpu_check.sh measures are valid targets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from samurai_onnx.compiler.manifest import load_target_manifest
from scripts.target_variant import write_variant

REPO = Path(__file__).resolve().parent.parent


def test_each_variant_changes_what_it_names(tmp_path: Path) -> None:
    base = load_target_manifest("cuda")
    dense = load_target_manifest(write_variant("cuda", "dense", tmp_path / "a.yaml"))
    assert dense.name == "cuda-dense" and dense.depthwise == "dense"
    assert dense.fused_attention == base.fused_attention
    assert dense.provider_options == base.provider_options
    both = load_target_manifest(write_variant("cuda-fp16", "nhwc+unfused", tmp_path / "b.yaml"))
    assert both.name == "cuda-fp16-nhwc+unfused" and not both.fused_attention
    cuda = both.provider_options["CUDAExecutionProvider"]
    assert cuda["prefer_nhwc"] == 1 and cuda["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert both.depthwise == "grouped" and both.precision == "fp16"
    graph = load_target_manifest(write_variant("cuda-fp16", "dense+graph", tmp_path / "c.yaml"))
    assert graph.provider_options["CUDAExecutionProvider"]["enable_cuda_graph"] == 1
    assert graph.depthwise == "dense"


@pytest.mark.parametrize(
    ("target", "variant", "needle"),
    [
        ("cuda", "dense+sparse", "unknown variant 'sparse'"),
        ("cpu", "nhwc", "does not use CUDAExecutionProvider"),
        ("cpu-int8", "graph", "does not use CUDAExecutionProvider"),
        ("gpu", "dense", "no such target"),
    ],
)
def test_bad_variants_are_one_line(tmp_path: Path, target: str, variant: str, needle: str) -> None:
    out = tmp_path / "v.yaml"
    result = subprocess.run(
        [sys.executable, "scripts/target_variant.py", target, variant, str(out)],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr
    assert not out.exists()
