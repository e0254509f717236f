"""samurai-validate and samurai-bench on the tiny random-weight bundle.

``validate`` compares every graph of the bundle with the oracle's own modules on real inputs
(this is where the graph wrappers' rewrites of SAMURAI's control flow are checked against
SAMURAI), and the tracking loop with the oracle's video predictor.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SYNTHETIC_BOX, requires_oracle, synthetic_frames, write_frames

pytestmark = [requires_oracle, pytest.mark.oracle, pytest.mark.slow]


def test_validate_reports_every_graph_and_frame(tiny256_bundle: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """At 256 pixels, against SAMURAI's code built at 256 (validate's logic does not depend on
    the size; the 1024-pixel graphs are checked against the oracle in the modeling tests and
    end to end in test_e2e_parity.py)."""
    from samurai_onnx.compiler.evaluate.validate import validate

    frames = write_frames(synthetic_frames(4), tmp_path / "frames")
    report = validate(tiny256_bundle, frames, SYNTHETIC_BOX, checkpoint=tiny_checkpoint, frames=4)
    names = {c.name for c in report.components}
    assert names == {
        "preprocess", "image_encoder", "mask_decoder", "memory_encoder", "memory_attention",
        "memory_attention/blocked", "postprocess",  # every form: the cpu target has blocked
    }  # fmt: skip
    for comp in report.components:
        for out, err in comp.outputs.items():
            # in-graph preprocessing: at most one 8-bit level of PIL's resize (normalised)
            limit = 0.018 if comp.name == "preprocess" else 1e-4
            limit = 1.0 if out == "video_boxes" else limit
            assert err.max_abs <= limit, f"{comp.name}.{out}: {err.max_abs}"
    assert [f.index for f in report.frames] == [0, 1, 2, 3]
    assert all(f.mask_iou >= 0.99 and f.box_error <= 1 for f in report.frames)
    assert all(f.candidate == f.oracle_candidate for f in report.frames[1:])
    assert report.ok
    md = report.to_markdown()
    assert "| memory_attention | conditioned_features |" in md and "**PASS**" in md


def test_validate_cli_exit_codes(tiny256_bundle: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    """A 256-pixel bundle validates against SAMURAI's code built at 256 pixels (exit 0); a
    config of another size or a checkpoint the bundle was not built from exit 2."""
    frames = write_frames(synthetic_frames(2), tmp_path / "frames")
    out = tmp_path / "report.json"
    cmd = [
        sys.executable, "scripts/validate_onnx.py", "--pytorch_model", "configs/samurai/sam2.1_hiera_t.yaml",
        "--onnx_models", str(tiny256_bundle), "--test_video", str(frames), "--bbox", "100,120,90,70",
        "--checkpoint", str(tiny_checkpoint), "--frames", "2", "--json", str(out),
    ]
    repo = Path(__file__).resolve().parent.parent
    ok = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, check=False)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(out.read_text())["ok"] is True
    wrong = subprocess.run(
        [*cmd[:3], "configs/samurai/sam2.1_hiera_l.yaml", *cmd[4:]], capture_output=True, text=True, cwd=repo, check=False
    )
    assert wrong.returncode == 2 and "holds SAM 2.1 tiny" in wrong.stderr
    other = tmp_path / "other.pt"
    other.write_bytes(tiny_checkpoint.read_bytes()[:-1] + b"x")
    bad = subprocess.run(
        [sys.executable, "-m", "samurai_onnx.compiler.evaluate.validate_cli", str(tiny256_bundle), str(frames),
         "--bbox", "100,120,90,70", "--checkpoint", str(other)],
        capture_output=True, text=True, cwd=repo, check=False,
    )
    assert bad.returncode == 2 and "not the one the bundle was built from" in bad.stderr


def test_bench_onnx_side_and_markdown(tiny256_bundle: Path) -> None:
    from samurai_onnx.compiler.evaluate.bench import benchmark, to_markdown

    args = {
        "bundle": str(tiny256_bundle), "device": "cpu", "batch_sizes": [1, 2], "video": None,
        "box": list(SYNTHETIC_BOX), "frames": 3, "repeats": 1, "threads": None, "size": "tiny",
        "steady_from": 1, "objects": [1, 2],
    }  # fmt: skip
    report = benchmark(args, reference=False)
    onnx = report["sides"]["onnx"]
    comps = onnx["components"]
    assert set(comps) == {
        "preprocess", "image_encoder", "memory_attention", "mask_decoder", "memory_encoder",
        "postprocess", "mask_prompt",
    }  # fmt: skip
    per_frame = {"image_encoder", "preprocess"}  # one call per frame, whatever the objects
    for name, per_b in comps.items():
        assert set(per_b) == ({"1"} if name in per_frame else {"1", "2"}), name
        assert all(t["median"] > 0 for t in per_b.values())
    for n in ("1", "2"):
        e = onnx["end_to_end"][n]
        assert e["seconds_per_frame"] > 0 and e["frames_timed"] == 2
        # the frame's time splits into graph runs and host work, both measured
        assert 0 < e["graph_seconds_per_frame"] < e["seconds_per_frame"]
        assert e["host_seconds_per_frame"] > 0
    assert set(onnx["unbatched"]) == {"2"} and onnx["peak_rss_mb"] > 100
    assert "ISA:" in report["machine"]
    md = to_markdown(report)
    assert "| image_encoder | 1 |" in md and "| memory_attention | 2 |" in md
    assert "| onnx | 2 |" in md and "one object per pass" in md


def test_bench_reference_side_at_the_bundle_size(tiny256_bundle: Path, tiny_checkpoint: Path) -> None:
    """The reference (SAMURAI's PyTorch code) is built at the bundle's image size: its graph calls
    take that size's shapes and its masks equal the fp32 bundle's on every frame. The size comes
    from the bundle, as samurai-bench passes it."""
    from samurai_onnx.compiler.evaluate.bench import benchmark
    from samurai_onnx.runtime.bundle import load_bundle

    args = {
        "bundle": str(tiny256_bundle), "device": "cpu", "batch_sizes": [1, 2], "video": None,
        "box": list(SYNTHETIC_BOX), "frames": 3, "repeats": 1, "threads": None, "size": "tiny",
        "image_size": load_bundle(tiny256_bundle).tracker.image_size, "steady_from": 1,
        "objects": [1], "checkpoint": str(tiny_checkpoint),
    }  # fmt: skip
    assert args["image_size"] == 256
    report = benchmark(args)
    torch_side = report["sides"]["pytorch"]
    assert set(torch_side["components"]) == {
        "image_encoder", "memory_attention", "mask_decoder", "memory_encoder",
    }  # fmt: skip
    assert set(torch_side["components"]["memory_attention"]) == {"1", "2"}
    assert torch_side["end_to_end"]["1"]["frames_timed"] == 2
    iou = report["sides"]["onnx"]["iou_vs_fp32_reference"]
    assert iou["frames"] == 3 and iou["min"] >= 0.999, iou


@pytest.mark.parametrize(("frames", "first"), [(2, 1), (9, 8), (12, 8), (16, 8), (17, 16), (40, 16)])
def test_bench_times_the_full_bank(frames: int, first: int) -> None:
    """Timed frames start where SAMURAI's bank is full: 7 memories (frame 7), 16 pointers (16)."""
    from samurai_onnx.compiler.evaluate.bench_cli import steady_from
    from samurai_onnx.runtime.bundle import TrackerSettings

    assert steady_from(frames, TrackerSettings()) == first


def test_bench_compares_n_objects_with_n_reference_runs() -> None:
    """SAMURAI's PyTorch predictor tracks one object, so N objects on the reference side are N
    one-object runs: the speed-up for 3 objects is 3 x its 1-object time over ours."""
    from samurai_onnx.compiler.evaluate.bench import to_markdown

    def e2e(s: float) -> dict[str, object]:
        return {"seconds_per_frame": s, "graph_seconds_per_frame": None,
                "host_seconds_per_frame": None, "frames_timed": 4}  # fmt: skip

    report = {
        "machine": "m", "args": {"bundle": "b", "device": "cpu"},
        "sides": {
            "onnx": {"engine": "ort", "components": {}, "peak_rss_mb": 1.0,
                     "end_to_end": {"1": e2e(2.0), "3": e2e(3.0)}, "unbatched": {},
                     "replays": {"1": {"mask_decoder": [20, 24, 2]}}},
            "pytorch": {"engine": "torch", "components": {}, "peak_rss_mb": 1.0,
                        "end_to_end": {"1": e2e(5.0)}, "unbatched": {}},
        },
    }  # fmt: skip
    md = to_markdown(report)
    # CUDA graphs: replays among the timed frames' runs, per pass
    assert "onnx, 1 object(s), CUDA graphs in the timed frames (replayed / runs (signatures " \
        "captured)): mask_decoder 20/24 (2)" in md  # fmt: skip
    assert "| onnx | 1 | 2.0000 | - | - | 2.50x |" in md
    assert "| onnx | 3 | 3.0000 | - | - | 5.00x (vs 3 runs) |" in md
    assert "N x its 1-object s / frame" in md


def test_bench_compares_bundles_in_one_run(
    tiny256_bundle: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    """--compare: other bundles of the same checkpoint get their own sides and rows in the same
    run (one reference for all); a bundle of another checkpoint or image size is refused in one
    line."""
    import shutil

    import yaml

    from samurai_onnx.compiler.evaluate.bench import benchmark, to_markdown
    from samurai_onnx.runtime.bundle import MANIFEST_NAME, seal_manifest

    other = tmp_path / "variant"
    shutil.copytree(tiny256_bundle, other)
    args = {
        "bundle": str(tiny256_bundle), "compare": [str(other)], "device": "cpu",
        "batch_sizes": [1], "video": None, "box": list(SYNTHETIC_BOX), "frames": 2,
        "repeats": 1, "threads": None, "size": "tiny", "steady_from": 1, "objects": [1],
    }  # fmt: skip
    report = benchmark(args, reference=False)
    assert set(report["sides"]) == {"onnx", "onnx variant"}
    for side in report["sides"].values():
        assert side["end_to_end"]["1"]["seconds_per_frame"] > 0
        assert set(side["components"]) >= {"image_encoder", "memory_encoder"}
    md = to_markdown(report)
    assert "compared with `" in md and "| memory_encoder (variant) | 1 |" in md
    assert "| onnx variant | 1 |" in md and "| onnx | 1 |" in md
    # a compared bundle that cannot run is reported; the others' numbers stand
    broken = benchmark({**args, "compare": [str(tmp_path / "absent")]}, reference=False)
    assert set(broken["sides"]) == {"onnx"} and "onnx absent" in broken["failed"]
    assert "| onnx absent | failed: the onnx benchmark failed" in to_markdown(broken)

    data = yaml.safe_load((other / MANIFEST_NAME).read_text())
    data["source_checkpoint"]["sha256"] = "0" * 64
    (other / MANIFEST_NAME).write_text(yaml.safe_dump(data, sort_keys=False))
    seal_manifest(other)
    # refused in one line, exit 2: another checkpoint; the same checkpoint at 1024 pixels
    for compared, needle in ((other, "another model, checkpoint or image size"),
                             (tiny_bundle, "at 1024 pixels")):  # fmt: skip
        result = subprocess.run(
            [sys.executable, "-m", "samurai_onnx.compiler.evaluate.bench_cli", str(tiny256_bundle),
             "--compare", str(compared), "--no-reference", "--frames", "2"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], result.stderr


def test_markdown_shows_the_ratio_to_fp16_autocast() -> None:
    """On a GPU the reference also runs in SAMURAI's fp16 autocast: every side's end-to-end row
    gives its ratio to that too (the GPU goal is stated against it)."""
    from samurai_onnx.compiler.evaluate.bench import to_markdown

    def side(s: float) -> dict[str, object]:
        e2e = {"seconds_per_frame": s, "graph_seconds_per_frame": None,
               "host_seconds_per_frame": None, "frames_timed": 4}  # fmt: skip
        return {"engine": "e", "components": {}, "peak_rss_mb": 1.0,
                "end_to_end": {"1": e2e}, "unbatched": {}}  # fmt: skip

    report = {
        "machine": "m", "args": {"bundle": "b", "device": "cuda"},
        "sides": {"onnx": side(0.02), "pytorch": side(0.04), "pytorch-fp16": side(0.03)},
    }  # fmt: skip
    fp16 = report["sides"]["pytorch-fp16"]
    fp16["iou_vs_fp32_reference"] = {"min": 0.58, "mean": 0.9, "frames": 3,
                                      "per_frame": [1.0, 0.58, 0.995]}  # fmt: skip
    md = to_markdown(report)
    assert "| vs PyTorch fp32 | vs PyTorch fp16 autocast |" in md
    # the frames under 0.99 are named (one outlier reads differently from a drift)
    assert "| 0.5800 / 0.9000 (< 0.99: frame 1 of 3) |" in md
    assert "| onnx | 1 | 0.0200 | - | - | 2.00x | 1.50x | 4 |" in md
    assert "| pytorch-fp16 | 1 | 0.0300 | - | - | 1.33x | - | 4 |" in md


def test_the_gpu_reference_is_strict_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyTorch runs fp32 cuDNN convolutions in TF32 by default on a GPU; the oracle (the fp32
    reference of samurai-bench and gpu_diagnose) turns TF32 off, as the fp32 bundles do, and
    through the flags that every torch version can read back."""
    import torch

    from samurai_onnx.compiler.evaluate.oracle import strict_fp32

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    assert strict_fp32() == "TF32 off"
    assert torch.backends.cudnn.allow_tf32 is False
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_the_fastest_of_several_reference_runs_counts() -> None:
    """--reference-runs: of several runs of one PyTorch side the fastest (one object) is kept,
    and its engine line lists every run's time; one run is kept as it is."""
    from samurai_onnx.compiler.evaluate.bench import EndToEnd, SideResult, fastest_run

    def run(ms: float, masks: str) -> SideResult:
        r = SideResult("pytorch-fp16", engine="torch on cuda, fp16 autocast", masks_file=masks)
        r.end_to_end = {1: EndToEnd(ms / 1e3, None, None, 12), 4: EndToEnd(ms / 250, None, None, 12)}
        return r

    best = fastest_run([run(34.4, "a"), run(24.1, "b"), run(30.0, "c")])
    assert best.masks_file == "b"  # its own masks: the IoU column compares that run
    assert best.engine == "torch on cuda, fp16 autocast; fastest of 3 runs (ms per frame: 34.4, 24.1, 30.0)"
    one = run(20.0, "x")
    assert fastest_run([one]) is one and one.engine == "torch on cuda, fp16 autocast"
    result = subprocess.run(
        [sys.executable, "-m", "samurai_onnx.compiler.evaluate.bench_cli", "bundle", "--reference-runs", "0"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and "--reference-runs" in result.stderr
