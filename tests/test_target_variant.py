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
    # the cuda targets have CUDA graphs and prefetch on: the plain loop is a variant
    plain = write_variant("cuda-fp16", "dense+nograph+noprefetch", tmp_path / "c.yaml")
    graph = load_target_manifest(plain)
    assert base.provider_options["CUDAExecutionProvider"]["enable_cuda_graph"] == 1
    assert graph.provider_options["CUDAExecutionProvider"]["enable_cuda_graph"] == 0
    assert graph.depthwise == "dense" and base.prefetch and not graph.prefetch
    trt = load_target_manifest(write_variant("tensorrt", "graph", tmp_path / "d.yaml"))
    assert trt.provider_options["CUDAExecutionProvider"]["enable_cuda_graph"] == 1


def _refused(args: list[str], needle: str) -> None:
    """scripts/target_variant.py ``args`` exits with 2 and one line containing ``needle``."""
    result = subprocess.run(
        [sys.executable, "scripts/target_variant.py", *args],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr


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
    _refused([target, variant, str(out)], needle)
    assert not out.exists()


def _cuda_copy(bundle: Path, out: Path) -> Path:
    """``bundle`` (cpu target) recorded as if compiled for CUDA, sealed: a GPU bundle for the test."""
    import shutil

    import yaml

    from samurai_onnx.runtime.bundle import seal_manifest

    shutil.copytree(bundle, out)
    data = yaml.safe_load((out / "bundle.yaml").read_text())
    data["target"].update(providers=["CUDAExecutionProvider", "CPUExecutionProvider"],
                          provider_options={"CUDAExecutionProvider": {"use_tf32": 0}})  # fmt: skip
    (out / "bundle.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    seal_manifest(out)
    return out


def test_a_runtime_variant_of_a_compiled_bundle_needs_no_compile(
    tiny256_bundle: Path, tmp_path: Path
) -> None:
    """``--bundle``: the same graph files, the variant in the recorded target, a bundle that
    loads with every hash checked; the source bundle is untouched (its files are linked)."""
    from samurai_onnx.runtime.bundle import load_bundle, sha256_file
    from scripts.target_variant import derive_bundle

    src = _cuda_copy(tiny256_bundle, tmp_path / "src")
    before = {p.name: sha256_file(p) for p in src.iterdir()}
    out = derive_bundle(src, "graph+nhwc", tmp_path / "graph")
    bundle = load_bundle(out)
    options = bundle.target["provider_options"]["CUDAExecutionProvider"]
    assert options == {"use_tf32": 0, "enable_cuda_graph": 1, "prefer_nhwc": 1}
    assert bundle.target["name"].endswith("-graph+nhwc")
    assert not bundle.prefetch and load_bundle(derive_bundle(src, "prefetch", tmp_path / "p")).prefetch
    assert {p.name: sha256_file(p) for p in src.iterdir()} == before
    load_bundle(src)
    for name, info in bundle.components.items():
        assert sha256_file(out / info.file) == sha256_file(src / info.file), name


@pytest.mark.parametrize(
    ("variant", "where", "needle"),
    [
        ("dense", "cuda", "dense changes the graphs, so a bundle cannot take it"),
        ("graph+unfused", "cuda", "unfused changes the graphs"),
        ("graph", "cpu", "does not use CUDAExecutionProvider"),
        ("graph", "exists", "exists; give a new folder"),
        ("graph", "edited", "does not match"),
    ],
)
def test_a_bundle_variant_that_cannot_be_made_is_one_line(
    tiny256_bundle: Path, tmp_path: Path, variant: str, where: str, needle: str
) -> None:
    src = tiny256_bundle if where == "cpu" else _cuda_copy(tiny256_bundle, tmp_path / "src")
    out = tmp_path / "out"
    if where == "exists":
        out.mkdir()
    if where == "edited":  # bundle.yaml changed after sealing: refused, as the loader refuses it
        with open(src / "bundle.yaml", "a") as fh:
            fh.write("\n# edited\n")
    _refused(["--bundle", str(src), variant, str(out)], needle)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert (where == "exists") == out.exists()
