"""Graphs in several forms (target ``alternatives``): built and checked by the compiler, verified
as bundle files, chosen at load by their time on the device, and tracking like the main form."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import yaml
from conftest import REPO, SYNTHETIC_BOX, _small_manifest, requires_oracle, write_frames

from samurai_onnx.compiler.build import PassReport, compile_bundle
from samurai_onnx.compiler.evaluate.bench import FULL_BANK
from samurai_onnx.compiler.evaluate.metrics import mask_iou
from samurai_onnx.compiler.evaluate.synthetic import synthetic_box, synthetic_frames
from samurai_onnx.compiler.modeling import common
from samurai_onnx.compiler.passes.depthwise import count_depthwise, densify_file
from samurai_onnx.runtime.bundle import (
    FORMS,
    BundleError,
    load_bundle,
    seal_manifest,
    sha256_file,
)
from samurai_onnx.runtime.engine import forms as forms_module
from samurai_onnx.runtime.engine.forms import FormCache, Timing
from samurai_onnx.runtime.tracker import Tracker, TrackerError

REPORTS: list[PassReport] = []


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test its own cache folder: a choice timed by one test is not another's."""
    monkeypatch.setenv("SAMURAI_ONNX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def forms_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny256 bundle's model and target (cpu) with ``alternatives: [dense, unfused,
    layernorm, blocked]``; blocks of 100 queries, so that the 256 queries of the 256-pixel
    memory attention make three blocks (100 + 100 + 56) as 4096 make four of 1024."""
    tmp = tmp_path_factory.mktemp("forms")
    target = yaml.safe_load((REPO / "targets" / "cpu.yaml").read_text())
    target.update(name="cpu-forms", alternatives=["dense", "unfused", "layernorm", "blocked"])
    target_file = tmp / "cpu-forms.yaml"
    target_file.write_text(yaml.safe_dump(target))
    manifest = _small_manifest(tmp / "tiny-256.yaml", 256)  # the tiny256 bundle's
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(common, "QUERY_BLOCK", 100)
        return compile_bundle(
            manifest, target_file, checkpoint=tiny_checkpoint, out_dir=tmp / "b",
            on_pass=REPORTS.append,
        )  # fmt: skip


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_each_alternative_is_built_where_it_applies(forms_bundle: Path) -> None:
    header = yaml.safe_load((forms_bundle / "bundle.yaml").read_text())
    assert header["target"]["alternatives"] == ["dense", "unfused", "layernorm", "blocked"]
    built = {n: sorted(c.get("alternatives", {})) for n, c in header["components"].items()}
    assert built == {
        "preprocess": [], "image_encoder": ["unfused"],
        "memory_attention": ["blocked", "unfused"], "mask_decoder": ["layernorm"],
        "memory_encoder": ["dense", "layernorm"], "postprocess": [], "mask_prompt": [],
    }  # fmt: skip
    # each form went through the passes and their checks against PyTorch, under its own name
    checked = {(r.component, r.name) for r in REPORTS if "/" in r.component}
    assert ("memory_encoder/dense", "dense-depthwise") in checked
    assert ("image_encoder/unfused", "simplify") in checked
    assert ("memory_attention/unfused", "simplify") in checked
    assert ("memory_encoder/layernorm", "simplify") in checked
    assert ("memory_attention/blocked", "simplify") in checked
    # blocked: per layer, self- and cross-attention in three blocks of queries each
    entry = header["components"]["memory_attention"]
    blocked_file = forms_bundle / entry["alternatives"]["blocked"]["file"]
    blocked = [n.op_type for n in onnx.load(str(blocked_file)).graph.node]
    assert blocked.count("Softmax") == 4 * 2 * 3 and "MultiHeadAttention" not in blocked
    assert max(entry["alternatives"]["blocked"]["max_abs_error"].values()) <= entry["tolerance"]
    for name in ("mask_decoder", "memory_encoder"):  # LayerNorm2d: no channel-axis ReduceMean
        alt = header["components"][name]["alternatives"]["layernorm"]
        assert "ReduceMean" in _ops(forms_bundle / header["components"][name]["file"])
        assert "ReduceMean" not in _ops(forms_bundle / alt["file"])
        assert "LayerNormalization" in _ops(forms_bundle / alt["file"])
        assert max(alt["max_abs_error"].values()) <= header["components"][name]["tolerance"]
    for name, form in (("image_encoder", "unfused"), ("memory_attention", "unfused")):
        alt = header["components"][name]["alternatives"][form]
        assert "MultiHeadAttention" in _ops(forms_bundle / header["components"][name]["file"])
        assert "MultiHeadAttention" not in _ops(forms_bundle / alt["file"])
        assert alt["sha256"] == sha256_file(forms_bundle / alt["file"])
        assert max(alt["max_abs_error"].values()) <= header["components"][name]["tolerance"]
    dense = header["components"]["memory_encoder"]["alternatives"]["dense"]
    assert count_depthwise(onnx.load(str(forms_bundle / dense["file"]))) == 0
    assert count_depthwise(onnx.load(str(forms_bundle / "memory_encoder.onnx"))) == 2
    bundle = load_bundle(forms_bundle)
    assert bundle.file("memory_encoder", "dense").name == "memory_encoder.dense.onnx"


def _track(bundle: Path, forms: str, n: int = 4) -> tuple[Tracker, list[Any]]:
    clip, box = synthetic_frames(n), list(synthetic_box())
    tracker = Tracker(load_bundle(bundle), num_frames=n, overrides=FULL_BANK, forms=forms)
    return tracker, [tracker.start(clip[0], [box])[0], *(tracker.step(f)[0] for f in clip[1:])]


def test_every_form_tracks_like_the_main_form(forms_bundle: Path, tiny256_bundle: Path) -> None:
    """The main forms are the tiny256 bundle's graphs (same numbers); dense, unfused and blocked
    differ by summation order only (a memory may move by one bfloat16 step), so IoU >= 0.999."""
    _, want = _track(tiny256_bundle, "main")
    for forms in ("main", "dense", "unfused", "layernorm", "blocked", "fastest"):
        tracker, got = _track(forms_bundle, forms)
        for a, b in zip(want, got, strict=True):
            if forms == "main":
                assert np.array_equal(a.mask, b.mask) and a.score == b.score
            assert mask_iou(a.mask, b.mask) >= 0.999, forms
            assert abs(a.score - b.score) <= 1e-3 * max(1.0, abs(a.score)), forms
        chosen = {n: c.chosen for n, c in tracker.graphs.forms.items()}
        if forms == "main":
            assert chosen == {} and "forms:" not in tracker.describe()
        elif forms == "dense":
            assert chosen == {"memory_encoder": "dense"}
        elif forms == "unfused":
            assert chosen == {"image_encoder": "unfused", "memory_attention": "unfused"}
        elif forms == "layernorm":
            assert chosen == {"mask_decoder": "layernorm", "memory_encoder": "layernorm"}
        elif forms == "blocked":
            assert chosen == {"memory_attention": "blocked"}
        else:  # timed: every multi-form graph, the fastest of its forms
            assert set(chosen) == {"image_encoder", "memory_attention", "mask_decoder",
                                   "memory_encoder"}  # fmt: skip
            for choice in tracker.graphs.forms.values():
                assert set(choice.seconds) == {"main", *load_bundle(forms_bundle).components[
                    choice.graph].alternatives}
                assert choice.seconds[choice.chosen] == min(choice.seconds.values())
            assert "forms: image_encoder: " in tracker.describe()


def test_the_form_that_times_fastest_runs(
    forms_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The choice follows the timing (here a fake one: dense 1 ms, everything else 10 ms; ties
    keep the main form), and only the chosen session runs afterwards."""

    def fake(fn: Any, repeats: int, sync: Any = None, *, warmup: int = 1) -> Timing:
        fn()
        dense = ".dense." in fn.func.__self__.path.name
        return Timing(0.001 if dense else 0.01, 0.01)

    monkeypatch.setattr(forms_module, "time_call", fake)
    tracker = Tracker(load_bundle(forms_bundle), forms="fastest")
    chosen = {n: c.chosen for n, c in tracker.graphs.forms.items()}
    assert chosen == {"image_encoder": "main", "memory_attention": "main", "mask_decoder": "main",
                      "memory_encoder": "dense"}  # fmt: skip
    session = tracker.graphs.sessions["memory_encoder"]
    assert session.path.name == "memory_encoder.dense.onnx" and session.calls == 0
    assert "memory_encoder: dense (1 ms; main 10 ms; layernorm 10 ms)" in tracker.describe()


def test_a_bad_forms_value_is_refused(forms_bundle: Path) -> None:
    with pytest.raises(TrackerError, match="forms 'densest' is not one of fastest, main, dense"):
        Tracker(load_bundle(forms_bundle), forms="densest")


def _edited(src: Path, dst: Path, edit: Any) -> Path:
    shutil.copytree(src, dst)
    data = yaml.safe_load((dst / "bundle.yaml").read_text())
    edit(data["components"]["memory_encoder"], dst)
    (dst / "bundle.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    seal_manifest(dst)
    return dst


def _break_dense(case: str, entry: dict[str, Any], root: Path) -> None:
    """The memory encoder's dense form made bad in one way (``case``)."""
    dense = entry["alternatives"]["dense"]
    if case == "tampered":
        with open(root / dense["file"], "ab") as fh:
            fh.write(b"\0")
    elif case == "outside":
        dense["file"] = "../memory_encoder.onnx"
    elif case == "missing":
        (root / dense["file"]).unlink()
    elif case == "unknown":
        entry["alternatives"]["sparse"] = copy.deepcopy(dense)
    else:
        del dense["file"]


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("tampered", "components.memory_encoder.alternatives.dense: memory_encoder.dense.onnx does not match its sha256"),
        ("outside", "points outside the bundle directory"),
        ("missing", "is missing; rebuild or re-copy the bundle"),
        ("unknown", f"unknown key(s) sparse; allowed: {', '.join(sorted(FORMS))}"),
        ("no_file", "alternatives.dense.file: missing (required)"),
    ],
)
def test_alternative_files_are_checked_like_main_ones(
    forms_bundle: Path, tmp_path: Path, case: str, needle: str
) -> None:
    bundle = _edited(forms_bundle, tmp_path / "b", lambda e, root: _break_dense(case, e, root))
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("tampered", "memory_encoder.dense.onnx does not match its sha256 (corrupted or modified); build all components (leave out --components)"),
        ("outside", "points outside the bundle directory"),
        ("missing", "is missing; build all components (leave out --components)"),
    ],
)
def test_a_components_build_keeps_only_checked_forms(
    forms_bundle: Path, tmp_path: Path, case: str, needle: str
) -> None:
    """``--components image_encoder`` into a bundle keeps its memory encoder's files: a kept
    form is checked as the loader checks it (one check), with the merge's own fix."""
    from samurai_onnx.compiler.staging import OutputError, kept_components

    header = {k: v for k, v in yaml.safe_load((forms_bundle / "bundle.yaml").read_text()).items()
              if k not in ("components", "format_version")}  # fmt: skip
    kept = kept_components(forms_bundle, header, ["image_encoder"])
    assert "memory_encoder.dense.onnx" in {f for k in kept for f in k.files}
    bundle = _edited(forms_bundle, tmp_path / "b", lambda e, root: _break_dense(case, e, root))
    with pytest.raises(OutputError) as info:
        kept_components(bundle, header, ["image_encoder"])
    assert needle in str(info.value) and "\n" not in str(info.value), str(info.value)


@requires_oracle
@pytest.mark.oracle
@pytest.mark.slow
def test_validate_checks_every_form_against_the_oracle(
    tiny256_bundle: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """A dense memory encoder added to the 256-pixel bundle: samurai-validate checks it against
    the oracle's module (built at 256 pixels) in its own row, and says which form tracked."""
    from samurai_onnx.compiler.evaluate.validate import validate

    def add_dense(entry: dict[str, Any], root: Path) -> None:
        densify_file(root / entry["file"], root / "memory_encoder.dense.onnx")
        entry["alternatives"] = {
            "dense": {
                "file": "memory_encoder.dense.onnx",
                "sha256": sha256_file(root / "memory_encoder.dense.onnx"),
                "precision": "fp32",
            }
        }

    bundle = _edited(tiny256_bundle, tmp_path / "b", add_dense)
    frames = write_frames(synthetic_frames(2), tmp_path / "frames")
    report = validate(bundle, frames, SYNTHETIC_BOX, checkpoint=tiny_checkpoint, frames=2,
                      forms="dense")  # fmt: skip
    rows = {c.name: c for c in report.components}
    assert set(rows["memory_encoder/dense"].outputs) == set(rows["memory_encoder"].outputs)
    for out, err in rows["memory_encoder/dense"].outputs.items():
        assert err.max_abs <= 1e-4, (out, err)
    assert report.forms == "memory_encoder: dense" and report.ok
    assert "graphs with several forms ran as: memory_encoder: dense" in report.to_markdown()


def test_the_bench_runs_and_names_the_forms(forms_bundle: Path) -> None:
    """samurai-bench's ``--forms`` reaches the tracker of each side; the engine line says which
    form ran (and, timed, how long each form took)."""
    from samurai_onnx.compiler.evaluate.bench import benchmark, to_markdown

    args = {
        "bundle": str(forms_bundle), "device": "cpu", "batch_sizes": [1], "video": None,
        "box": list(synthetic_box()), "frames": 2, "repeats": 1, "threads": None,
        "size": "tiny", "steady_from": 1, "objects": [1], "forms": "dense",
    }  # fmt: skip
    report = benchmark(args, reference=False)
    engine = report["sides"]["onnx"]["engine"]
    assert engine.endswith("; forms: memory_encoder: dense"), engine
    assert "forms: memory_encoder: dense" in to_markdown(report)


def test_gpu_diagnose_checks_and_times_every_form(
    forms_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scripts/gpu_diagnose.py (CPU dry run) on a bundle with forms: each form gets its own
    device-vs-CPU parity and timings, the bundle's dense form replaces the script's own rewrite,
    and the end-to-end comparison runs the main forms on both sides."""
    import sys

    from scripts import gpu_diagnose

    out = tmp_path / "diag"
    argv = ["gpu_diagnose.py", str(forms_bundle), "--out", str(out), "--device", "cpu",
            "--graphs", "memory_encoder", "--repeats", "1", "--frames", "0"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    gpu_diagnose.main()
    enc = json.loads((out / "diagnose.json").read_text())["graphs"]["memory_encoder"]
    assert max(enc["parity_dense"]["optimized"].values()) == 0.0  # CPU against CPU
    assert enc["dense_cpu_error"] == 0.0  # the dense form: the main form's numbers
    assert {"target", "dense", "static", "dense+static", "layernorm", "layernorm+static"} == set(
        enc["ms"])  # the bundle's forms, each also specialised to its shapes  # fmt: skip
    assert max(enc["parity_layernorm"]["optimized"].values()) == 0.0
    assert "dense form, max rel. error device vs CPU" in (out / "diagnose.md").read_text()


def _counting(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The graphs ``fastest_form`` times, one entry per timed form (each timed by one run: these
    tests count timings, they do not compare them)."""
    timed: list[str] = []
    real = forms_module.time_call

    def spy(fn: Any, repeats: int, sync: Any = None, *, warmup: int = 1) -> Timing:
        timed.append(fn.func.__self__.path.name)
        return real(fn, 1, warmup=0)

    monkeypatch.setattr(forms_module, "time_call", spy)
    return timed


def test_a_cpu_times_each_bundle_once(
    forms_bundle: Path, _own_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a CPU the choice is kept in <cache>/forms.json: the next tracker loads the chosen
    forms without timing them; another thread count is another setting (timed again); a
    damaged cache file or entry is ignored, never trusted."""
    timed = _counting(monkeypatch)
    bundle = load_bundle(forms_bundle)
    first = Tracker(bundle, threads=1)
    assert len(timed) == 10  # image encoder, decoder: 2 forms; memory attention, encoder: 3
    chosen = {n: c.chosen for n, c in first.graphs.forms.items()}
    again = Tracker(bundle, threads=1)
    assert len(timed) == 10  # nothing timed: all four choices came from the cache
    assert {n: c.chosen for n, c in again.graphs.forms.items()} == chosen
    assert all(c.cached for c in again.graphs.forms.values()) and ", cached)" in again.describe()
    Tracker(bundle, threads=2)
    assert len(timed) == 20

    cache = _own_cache / "forms.json"
    entries = json.loads(cache.read_text())
    assert len(entries) == 8  # 4 graphs x 2 thread counts
    for bad in ("not json", json.dumps({k: {"chosen": "sparse", "seconds": {}} for k in entries})):
        cache.write_text(bad)
        timed.clear()
        Tracker(bundle, threads=1)
        assert len(timed) == 10, bad
    cache.write_text("x" * (FormCache.LIMIT + 1))  # oversized: not read
    timed.clear()
    Tracker(bundle, threads=1)
    assert len(timed) == 10
    cache.unlink()
    cache.mkdir()  # cannot be written: still runs, times again next time
    timed.clear()
    Tracker(bundle, threads=1)
    Tracker(bundle, threads=1)
    assert len(timed) == 20
    assert sorted(p.name for p in _own_cache.iterdir()) == ["forms.json"]  # no stray files


@pytest.mark.parametrize(
    "entry",
    [
        {"chosen": "main", "seconds": {"main": 0.1}, "failed": ["dense"]},  # the good one
        {"chosen": "main", "seconds": {"main": 0.1}, "failed": ["main", "dense"]},
        {"chosen": "dense", "seconds": {"main": 0.1}, "failed": ["dense"]},
        {"chosen": "main", "seconds": {"main": 0.1, "dense": 0.2}, "failed": ["dense"]},
        {"chosen": "main", "seconds": {"main": 0.1}, "failed": "dense"},
        {"chosen": "main", "seconds": {"main": 0.1}, "failed": [["dense"]]},
        {"chosen": "main", "seconds": {"main": 0.1}},
        {"chosen": "dense", "seconds": {"dense": 0.1}, "failed": ["main"], "off": {"main": 1.5}},
        {"chosen": "dense", "seconds": {"dense": 0.1}, "failed": ["main"], "off": {"dense": 1.5}},
        {"chosen": "main", "seconds": {"main": 0.1}, "failed": ["dense"], "off": {"dense": "x"}},
        {"chosen": "main", "seconds": {"main": 0.1}, "failed": ["dense"], "off": ["dense"]},
    ],
)
def test_a_cached_failure_is_used_only_when_consistent(
    _own_cache: Path, entry: dict[str, Any]
) -> None:
    """A cached entry with failed forms is trusted only if its timed and failed forms are
    exactly the graph's forms, disjoint, and the chosen form did not fail (main only by being
    off: too far from the CPU on this device, with its distance recorded)."""
    cache = FormCache(_own_cache / "forms.json")
    _own_cache.mkdir()
    cache.path.write_text(json.dumps({"k": entry}))
    got = cache.get("k", "memory_encoder", ["main", "dense"])
    if entry == {"chosen": "main", "seconds": {"main": 0.1}, "failed": ["dense"]}:
        assert got is not None and got.failed == ["dense"] and got.cached
        assert got.line() == "memory_encoder: main (100 ms; dense failed, cached)"
    elif entry.get("off") == {"main": 1.5}:
        assert got is not None and got.chosen == "dense" and got.off == {"main": 1.5}
        assert got.line() == "memory_encoder: dense (100 ms; main off by 1.5, cached)"
    else:
        assert got is None


def test_a_components_build_keeps_the_other_graphs_forms(
    forms_bundle: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """``--components mask_decoder`` into a bundle with forms: the kept graphs keep their
    alternative files and entries, and the bundle still loads (hashes checked)."""
    out = tmp_path / "b"
    shutil.copytree(forms_bundle, out)
    compile_bundle(
        forms_bundle.parent / "tiny-256.yaml", forms_bundle.parent / "cpu-forms.yaml",
        checkpoint=tiny_checkpoint, out_dir=out, components=["mask_decoder"],
    )  # fmt: skip
    bundle = load_bundle(out)
    assert set(bundle.components["memory_encoder"].alternatives) == {"dense", "layernorm"}
    assert set(bundle.components["image_encoder"].alternatives) == {"unfused"}
    assert set(bundle.components["mask_decoder"].alternatives) == {"layernorm"}  # rebuilt
    assert bundle.file("memory_encoder", "dense").is_file()


def test_a_form_that_fails_to_load_is_left_out(
    forms_bundle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An alternative the engine cannot load (e.g. a provider without one of its operators) is
    skipped with a warning, and the graph runs in the forms that work; the main form failing
    is an error, as without forms."""
    from samurai_onnx.runtime.engine import EngineError
    from samurai_onnx.runtime.engine.onnxruntime import OrtEngine

    real = OrtEngine.load
    refused = {"memory_encoder.dense.onnx"}

    def load(self: OrtEngine, path: Path, spec: Any) -> Any:
        if path.name in refused:
            raise EngineError(f"{path.name}: ONNX Runtime cannot load the graph (refused)")
        return real(self, path, spec)

    monkeypatch.setattr(OrtEngine, "load", load)
    tracker = Tracker(load_bundle(forms_bundle), forms="fastest")
    encoder = tracker.graphs.forms["memory_encoder"]
    assert encoder.chosen in ("main", "layernorm") and encoder.failed == ["dense"]
    assert set(encoder.seconds) == {"main", "layernorm"} and "dense failed" in tracker.describe()
    loads: list[str] = []
    monkeypatch.setattr(
        OrtEngine, "load", lambda self, path, spec: loads.append(path.name) or load(self, path, spec)
    )
    again = Tracker(load_bundle(forms_bundle), forms="fastest")  # on a CPU: cached, failure too
    encoder = again.graphs.forms["memory_encoder"]
    assert encoder.cached and encoder.chosen in ("main", "layernorm") and encoder.failed == ["dense"]
    assert "memory_encoder.dense.onnx" not in loads and "dense failed, cached" in again.describe()
    refused.add("memory_encoder.onnx")
    # timed afresh: a cached choice of layernorm (faster on some CPUs) would never load main
    monkeypatch.setenv("SAMURAI_ONNX_CACHE", str(tmp_path / "fresh"))
    with pytest.raises(EngineError, match=r"memory_encoder\.onnx"):
        Tracker(load_bundle(forms_bundle), forms="fastest")


def test_fused_fp32_attention_on_cuda_is_warned_about(
    forms_bundle: Path, tiny256_bundle: Path
) -> None:
    """ONNX Runtime's fused fp32 MultiHeadAttention was wrong on CUDA for memory attention (H200,
    onnxruntime-gpu 1.31.1): loading such a graph on CUDA says so and names the fix; unfused
    attention, fp16 bundles and the CPU are not warned about."""
    plain = Tracker(load_bundle(tiny256_bundle), forms="main").graphs
    assert plain.check_attention_kernels() is None  # on the CPU
    plain.engine.device = "cuda"  # type: ignore[misc]  # as if the CUDA provider ran it
    warning = plain.check_attention_kernels()
    assert warning is not None and "relative error of 0.48" in warning
    assert warning.endswith("use a bundle built with --target cuda (unfused attention) on a GPU")
    with_forms = Tracker(load_bundle(forms_bundle), forms="main").graphs
    with_forms.engine.device = "cuda"  # type: ignore[misc]
    assert "use --forms unfused (unfused attention)" in (with_forms.check_attention_kernels() or "")
    unfused = Tracker(load_bundle(forms_bundle), forms="unfused").graphs
    unfused.engine.device = "cuda"  # type: ignore[misc]
    assert unfused.check_attention_kernels() is None


def _shifted(src: Path, dst: Path, by: float = 1.0) -> Path:
    """``src`` (a memory encoder) with its output projection's bias moved by ``by``: a form whose
    numbers are off, as a wrong device kernel would make them."""
    model = onnx.load(str(src))
    (bias,) = [t for t in model.graph.initializer if t.name == "memory_encoder.out_proj.bias"]
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + by, bias.name))
    onnx.save(model, str(dst))
    return dst


def test_a_form_off_on_the_device_is_left_out(
    forms_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A form whose outputs stray from the CPU's by more than the graph's tolerance is not run,
    even when it times fastest: the load says so in one warning and in the engine line, and a
    CPU's cache remembers it (not loaded again)."""
    from samurai_onnx.runtime.engine.onnxruntime import OrtEngine

    def shift_dense(entry: dict[str, Any], root: Path) -> None:
        dense = root / entry["alternatives"]["dense"]["file"]
        _shifted(dense, dense)
        entry["alternatives"]["dense"]["sha256"] = sha256_file(dense)

    bundle = _edited(forms_bundle, tmp_path / "b", shift_dense)

    def fake(fn: Any, repeats: int, sync: Any = None, *, warmup: int = 1) -> Timing:
        fn()
        return Timing(0.001 if ".dense." in fn.func.__self__.path.name else 0.01, 0.01)

    monkeypatch.setattr(forms_module, "time_call", fake)
    tracker = Tracker(load_bundle(bundle), forms="fastest")
    encoder = tracker.graphs.forms["memory_encoder"]
    assert encoder.chosen == "main" and encoder.failed == ["dense"]
    assert 0.5 < encoder.off["dense"] < 2, encoder.off  # the bias moved by 1 (bf16 memories)
    assert tracker.graphs.sessions["memory_encoder"].path.name == "memory_encoder.onnx"
    assert "dense off by" in tracker.describe()
    warned = [r.getMessage() for r in caplog.records if "dense form is left out" in r.getMessage()]
    assert len(warned) == 1 and "from the CPU's" in warned[0] and "tolerance is 0.0001" in warned[0]
    assert {c.graph: c.off for c in tracker.graphs.forms.values() if c.off} == {
        "memory_encoder": encoder.off}  # the forms that agree are not judged  # fmt: skip
    loads: list[str] = []
    real = OrtEngine.load
    monkeypatch.setattr(
        OrtEngine, "load", lambda self, path, spec: loads.append(path.name) or real(self, path, spec)
    )
    again = Tracker(load_bundle(bundle), forms="fastest")
    assert again.graphs.forms["memory_encoder"].cached and "memory_encoder.dense.onnx" not in loads
    assert again.graphs.forms["memory_encoder"].off == encoder.off


def test_the_main_form_off_on_the_device_gives_way(tiny256_bundle: Path, tmp_path: Path) -> None:
    """Where the main form is the one off (as fused fp32 attention was on an H200), a form that
    agrees with the CPU runs instead; where every form is off, the closest one runs."""
    from samurai_onnx.runtime.contract import contract, steady_state_feeds
    from samurai_onnx.runtime.engine.base import EngineSettings
    from samurai_onnx.runtime.engine.forms import cpu_reference, fastest_form, max_difference
    from samurai_onnx.runtime.engine.onnxruntime import OrtEngine

    bundle = load_bundle(tiny256_bundle)
    good = bundle.file("memory_encoder")
    spec = contract("memory_encoder", bundle.tracker.geometry)
    feeds = steady_state_feeds("memory_encoder", 1, bundle.tracker.geometry, False)
    files = {"main": _shifted(good, tmp_path / "main.onnx"), "dense": good}
    truth = cpu_reference(good, spec, feeds)
    engine = OrtEngine(EngineSettings())
    tol = bundle.components["memory_encoder"].tolerance
    _, choice = fastest_form(engine, spec, files, feeds, repeats=1, tolerance=tol,
                             reference=lambda: truth)  # fmt: skip
    assert choice.chosen == "dense" and choice.failed == ["main"] and set(choice.seconds) == {"dense"}
    assert choice.line().startswith("memory_encoder: dense (") and "main off by" in choice.line()
    # every form off: the closer one runs, and nothing is left without a form
    far = {k: v - 0.75 if k == "memory_pool_out" else v for k, v in truth.items()}  # main: +1
    assert abs(max_difference(far, truth) - 0.75) < 1e-5
    session, choice = fastest_form(engine, spec, files, feeds, repeats=1, tolerance=tol,
                                   reference=lambda: far)  # fmt: skip
    assert choice.chosen == "dense" and choice.failed == ["main"] and session.path == good
    # no tolerance (or forms that agree): nothing is compared, the reference is never asked for
    def never() -> dict[str, np.ndarray]:
        raise AssertionError("the reference was computed")

    _, choice = fastest_form(engine, spec, {"main": good, "dense": good}, feeds, repeats=1,
                             tolerance=tol, reference=never)  # fmt: skip
    assert not choice.off and not choice.failed


def test_max_difference_counts_what_differs() -> None:
    from samurai_onnx.runtime.engine.forms import max_difference

    a = {"x": np.array([1.0, np.inf, -np.inf, 2.0]), "n": np.array([3])}
    assert max_difference(a, {"x": np.array([1.0, np.inf, -np.inf, 2.5]), "n": np.array([3])}) == 0.5
    assert max_difference(a, {"x": np.array([1.0, np.inf, np.nan, 2.0])}) == np.inf
    assert max_difference(a, {"x": np.array([1.0, -np.inf, -np.inf, 2.0])}) == np.inf
    assert max_difference(a, {"x": np.zeros(3)}) == np.inf  # another shape
    assert max_difference(a, {"n": np.array([5])}) == 2.0  # only the outputs both have


def test_forms_agree_within_tolerance_and_a_bfloat16_step() -> None:
    """Memories are rounded to bfloat16 in the graphs, so one step of the value is never a
    disagreement (an fp32 GPU kernel moves some by that much); anything beyond the tolerance
    and that step is, and so are NaN and another shape."""
    from samurai_onnx.runtime.engine.forms import agrees

    ref = {"m": np.array([4.0, -8.0, 0.0, np.inf])}
    step = {"m": np.array([4.0 + 2.0**-6, -8.0 - 2.0**-5, 1e-4, np.inf])}  # one bf16 step each
    assert agrees(step, ref, 1e-4) and agrees(ref, step, 1e-4)
    assert not agrees({"m": np.array([4.0 + 0.1, -8.0, 0.0, np.inf])}, ref, 1e-4)
    assert agrees({"m": np.array([4.0 + 0.1, -8.0, 0.0, np.inf])}, ref, 0.07)  # 0.07 + 0.032
    assert not agrees({"m": np.array([4.0, -8.0, np.nan, np.inf])}, ref, 1.0)
    assert not agrees({"m": np.zeros(3)}, ref, 1.0)
