"""The OpenVINO engine on the CPU: fp32 numerics and the tracking loop against ONNX Runtime's,
``into=`` semantics, option checks, and the ``cpu-openvino`` target's build (checks on OpenVINO).

Skipped where openvino is not installed (``pip install 'samurai-onnx[openvino]'``). Everything
runs at f32 here (the ``precision`` option forced), whatever the CPU: bf16 needs AMX to pay, and
its numbers are covered by the build test with a bf16 hint.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import REPO, SYNTHETIC_BOX, requires_oracle, synthetic_frames

from samurai_onnx.compiler.passes.verify import bf16_step
from samurai_onnx.runtime.bundle import Bundle, load_bundle, seal_manifest
from samurai_onnx.runtime.contract import MODEL_GRAPHS, ContractError, contract, example_feeds
from samurai_onnx.runtime.engine import EngineError, EngineSettings, create_engine
from samurai_onnx.runtime.tracker import Tracker

ov = pytest.importorskip("openvino")

import samurai_onnx.runtime.engine.openvino as openvino_engine  # noqa: E402  (needs openvino)
from samurai_onnx.runtime.engine.openvino import (  # noqa: E402  (needs openvino)
    DelegatedSession,
    OpenVinoEngine,
    plugin_runs_bf16,
    resolve_precision,
)

# OpenVINO's CPU plugin runs bf16 only on AVX512 CPUs; elsewhere it is an f32 engine
runs_bf16 = pytest.mark.skipif(
    not plugin_runs_bf16(ov.Core()), reason="OpenVINO offers no bf16 on this CPU (no AVX512)"
)

F32 = {"precision": "f32", "cache_dir": None}
# Sizes for every named axis: two objects (batched graphs; the memory encoder's static fallback),
# a few memories and pointers (a full bank costs seconds more here), a small frame.
DIMS = {
    "batch": 1, "objects": 2, "embed_batch": 2, "memories": 3, "pointers": 5, "points": 2,
    "candidates": 4, "ptr_candidates": 4, "memory_slots": 14, "ptr_slots": 32,
    "height": 90, "width": 160, "mask_height": 90, "mask_width": 160,
}  # fmt: skip


def ov_engine(threads: int | None = 2, **options: Any) -> OpenVinoEngine:
    engine = create_engine(
        EngineSettings(engine="openvino", threads=threads, options={**F32, **options})
    )
    assert isinstance(engine, OpenVinoEngine)
    return engine


def ort_engine() -> Any:
    return create_engine(EngineSettings(threads=2))


def openvino_bundle(bundle: Bundle, **options: Any) -> Bundle:
    """``bundle`` (the cpu target's files) run on OpenVINO at f32."""
    target = {**bundle.target, "engine": "openvino", "engine_options": {**F32, **options}}
    return dataclasses.replace(bundle, target=target)


def max_diff(name: str, got: np.ndarray, want: np.ndarray) -> float:
    diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
    if name == "memory_pool_out":  # rounded to bfloat16 in the graph: one step may differ
        diff = np.maximum(diff - bf16_step(want), 0.0)
    return float(diff.max()) if diff.size else 0.0


# -- options -----------------------------------------------------------------------------------


def test_auto_precision_follows_the_cpu_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(openvino_engine, "plugin_runs_bf16", lambda core: True)
    assert resolve_precision("auto", {"avx512f", "amx_bf16", "avx512_bf16"}) == "bf16"
    assert resolve_precision("auto", {"avx512f", "avx512_bf16"}) == "f32"  # measured slower
    assert resolve_precision("auto", {"avx2"}) == "f32"
    assert resolve_precision("auto", None) == "f32"  # flags unknown
    assert resolve_precision("bf16", {"avx2"}) == "bf16"
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Xeon\nflags\t\t: fpu avx512f amx_bf16 amx_tile\n")
    settings = EngineSettings(engine="openvino", options={"cache_dir": None})
    engine = OpenVinoEngine(settings, cpuinfo=cpuinfo)
    assert engine.precision == "bf16"
    assert "precision bf16 (option auto, native bf16: amx_bf16)" in engine.describe()
    assert engine.run_precision("image_encoder", "fp32") == "bf16"
    assert engine.run_precision("postprocess", "fp32") == "fp32"  # always f32, see the engine
    assert engine.config("memory_attention")["INFERENCE_PRECISION_HINT"] == "bf16"
    assert engine.config("preprocess")["INFERENCE_PRECISION_HINT"] == "f32"
    cpuinfo.write_text("flags\t\t: fpu avx2\n")
    assert OpenVinoEngine(settings, cpuinfo=cpuinfo).precision == "f32"
    # bf16 asked for where OpenVINO's plugin has none (AVX2 only): f32, said, not pretended
    monkeypatch.setattr(openvino_engine, "plugin_runs_bf16", lambda core: False)
    forced = dataclasses.replace(settings, options={"cache_dir": None, "precision": "bf16"})
    engine = OpenVinoEngine(forced, cpuinfo=cpuinfo)
    assert engine.precision == "f32" and engine.run_precision("image_encoder", "fp32") == "fp32"
    assert "OpenVINO cannot run bf16 on this CPU" in caplog.text


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precison": "bf16"}, "unknown OpenVINO engine option(s) precison; allowed: precision"),
        ({"precision": "fp16"}, "precision 'fp16' is not one of auto, bf16, f32"),
        ({"performance_hint": "FAST"}, "performance_hint 'FAST' is not one of LATENCY"),
        ({"cache_dir": 3}, "cache_dir 3: expected a folder path, or null"),
    ],
)
def test_bad_options_are_one_line_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(EngineError, match=None) as err:
        create_engine(EngineSettings(engine="openvino", options=options))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_options_reach_openvino(tmp_path: Path) -> None:
    engine = ov_engine(threads=3, performance_hint="throughput", cache_dir=str(tmp_path / "c"))
    config = engine.config("mask_decoder")
    assert config["INFERENCE_NUM_THREADS"] == 3
    assert config["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert config["CACHE_DIR"] == str(tmp_path / "c")
    assert "INFERENCE_NUM_THREADS" not in ov_engine(threads=None).config("mask_decoder")
    home = ov_engine(cache_dir="~/ov-cache-test")
    assert home.cache_dir == str(Path.home() / "ov-cache-test")


def test_gpu_devices_are_refused() -> None:
    settings = EngineSettings(
        engine="openvino",
        providers=(("CUDAExecutionProvider", {}), ("CPUExecutionProvider", {})),
        options=F32,
    )
    with pytest.raises(EngineError, match="runs on OpenVINO on the CPU, which cannot use CUDA"):
        create_engine(settings)


# -- graphs --------------------------------------------------------------------------------------


def test_every_graph_matches_onnxruntime_at_fp32(tiny256_bundle: Path) -> None:
    """Each graph of the cpu bundle on OpenVINO (f32) vs ONNX Runtime, on contract inputs; the
    two with an antialiased Resize run on ONNX Runtime inside the OpenVINO engine."""
    bundle = load_bundle(tiny256_bundle)
    geo = bundle.tracker.geometry
    ov_e, ort_e = ov_engine(), ort_engine()
    worst: dict[str, float] = {}
    for name in bundle.components:
        spec = contract(name, geo)
        feeds = example_feeds(spec, geo, DIMS, seed=3)
        got = ov_e.load(bundle.file(name), spec).run(feeds)
        want = ort_e.load(bundle.file(name), spec).run(feeds)
        assert list(got) == list(spec.output_names)
        for out in spec.output_names:
            g, w = ov_e.download(got[out]), ort_e.download(want[out])
            assert g.shape == w.shape and g.dtype == w.dtype, out
            worst[f"{name}.{out}"] = max_diff(out, g, w)
    print(f"\nOpenVINO f32 vs ONNX Runtime, max abs difference: {worst}")
    assert all(v <= 1e-4 for v in worst.values()), worst
    assert sorted(ov_e.delegated) == sorted({"preprocess", "mask_prompt"} & set(bundle.components))
    assert "preprocess" in ov_e.describe() and "on onnxruntime" in ov_e.describe()


def test_feeds_that_are_views_or_temporaries(tiny256_bundle: Path) -> None:
    """Non-contiguous and read-only feeds (copied for OpenVINO) give the same results: the copies
    live until the run is over (a regression: freed copies once gave garbage)."""
    bundle = load_bundle(tiny256_bundle)
    geo = bundle.tracker.geometry
    spec = contract("mask_decoder", geo)
    session = ov_engine().load(bundle.file("mask_decoder"), spec)
    feeds = example_feeds(spec, geo, {**DIMS, "objects": 1, "embed_batch": 1}, seed=5)
    want = session.run(feeds)
    views: dict[str, np.ndarray] = {}
    for name, value in feeds.items():
        flipped = np.flip(np.flip(value.copy(), axis=-1).copy(), axis=-1)  # negative strides
        assert not flipped.flags.c_contiguous or flipped.ndim == 0 or flipped.shape[-1] == 1
        views[name] = flipped
    views["point_labels"].flags.writeable = False
    got = session.run(views)
    for out in spec.output_names:
        np.testing.assert_array_equal(got[out], want[out])


def test_dynamic_shapes_in_one_session(tiny256_bundle: Path) -> None:
    """Memory attention with other object, memory and pointer counts, one compiled model."""
    bundle = load_bundle(tiny256_bundle)
    geo = bundle.tracker.geometry
    spec = contract("memory_attention", geo)
    session = ov_engine().load(bundle.file("memory_attention"), spec)
    ort_session = ort_engine().load(bundle.file("memory_attention"), spec)
    dims = {**DIMS, "objects": 1, "memories": 2, "pointers": 3, "memory_slots": 9, "ptr_slots": 20}
    feeds = example_feeds(spec, geo, dims, seed=4)
    got = session.run(feeds)["conditioned_features"]
    want = np.asarray(ort_session.run(feeds)["conditioned_features"].numpy())
    assert got.shape == (1, geo.d_model, geo.feat_size, geo.feat_size)
    assert max_diff("", got, want) <= 1e-4
    assert not getattr(session, "static", False)  # stayed one dynamic model


def test_into_writes_the_given_buffers(tiny256_bundle: Path) -> None:
    bundle = load_bundle(tiny256_bundle)
    geo = bundle.tracker.geometry
    spec = contract("memory_encoder", geo)
    engine = ov_engine()
    session = engine.load(bundle.file("memory_encoder"), spec)
    feeds = example_feeds(spec, geo, {**DIMS, "objects": 1, "memory_slots": 7, "ptr_slots": 16})
    plain = session.run(feeds)
    buffers = {
        "memory_pool_out": engine.zeros(plain["memory_pool_out"].shape, "float32"),
        "ptr_pool_out": engine.zeros(plain["ptr_pool_out"].shape, "float32"),
    }
    out = session.run(feeds, into=buffers)
    for name, buf in buffers.items():
        assert out[name] is buf  # the given object, written in place
        np.testing.assert_array_equal(buf, plain[name])
    # A later run without into leaves those buffers alone and returns its own arrays.
    kept = {k: v.copy() for k, v in buffers.items()}
    other = dict(feeds, memory_slot=np.array([3], np.int64), ptr_slot=np.array([5], np.int64))
    again = session.run(other)
    for name, buf in buffers.items():
        np.testing.assert_array_equal(buf, kept[name])
        assert not np.shares_memory(again[name], buf)
    # Outputs are the caller's: a later run does not change a previous result.
    before = plain["ptr_pool_out"].copy()
    session.run(other)
    np.testing.assert_array_equal(plain["ptr_pool_out"], before)
    with pytest.raises(EngineError, match="memory_encoder: OpenVINO failed"):  # wrong shape
        session.run(feeds, into={"ptr_pool_out": engine.zeros((3, 256), "float32")})
    with pytest.raises(EngineError, match="no output"):
        session.run(feeds, into={"nope": engine.zeros((1,), "float32")})
    upload_src = np.ones((2, 2), np.float32)
    value = engine.upload(upload_src)
    upload_src[:] = 5  # an upload is a copy, as on a device
    assert engine.download(value).tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_errors_are_engine_errors(tiny256_bundle: Path, tmp_path: Path) -> None:
    bundle = load_bundle(tiny256_bundle)
    geo = bundle.tracker.geometry
    engine = ov_engine()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not an onnx file")
    with pytest.raises(EngineError, match=r"broken\.onnx: OpenVINO cannot load the graph") as err:
        engine.load(broken, contract("mask_decoder", geo))
    assert "\n" not in str(err.value)
    # the preprocess graph needs Resize's antialias, which OpenVINO's CPU plugin ignores: it runs
    # on ONNX Runtime, and into= is honoured there too
    pre = engine.load(bundle.file("preprocess"), contract("preprocess", geo))
    assert isinstance(pre, DelegatedSession) and engine.delegated == ["preprocess"]
    frame = np.zeros((48, 64, 3), np.uint8)
    buffer = engine.zeros((1, 3, geo.image_size, geo.image_size), "float32")
    assert pre.run({"frame": frame}, into={"image": buffer})["image"] is buffer
    with pytest.raises(EngineError, match="does not fit the given buffer"):
        pre.run({"frame": frame}, into={"image": engine.zeros((1, 3, 8, 8), "float32")})
    # a graph that is not the one the contract describes
    with pytest.raises(ContractError, match="mask_decoder: inputs are"):
        engine.load(bundle.file("memory_encoder"), contract("mask_decoder", geo))
    spec = contract("postprocess", geo)
    session = engine.load(bundle.file("postprocess"), spec)
    feeds = example_feeds(spec, geo, DIMS)
    with pytest.raises(EngineError, match="no value for input"):
        session.run({"mask_logits": feeds["mask_logits"]})
    bad = dict(feeds, mask_logits=feeds["mask_logits"][:, :, :5])  # a size the graph fixes
    low = geo.low_res_mask_size
    with pytest.raises(
        EngineError, match=rf"postprocess: input mask_logits has shape \[2, 1, 5, {low}\]"
    ):
        session.run(bad)
    bad = dict(feeds, video_size=feeds["video_size"].astype(np.int32))
    with pytest.raises(EngineError, match="video_size is int32, the contract says int64"):
        session.run(bad)
    # a failure inside OpenVINO: the video size that makes no sense
    bad = dict(feeds, video_size=np.array([-5, 0], np.int64))
    with pytest.raises(EngineError, match="postprocess: OpenVINO failed") as err:
        session.run(bad)
    assert "\n" not in str(err.value)


# -- the tracking loop ---------------------------------------------------------------------------


@pytest.mark.slow
def test_tracking_equals_onnxruntime_at_fp32(tiny_bundle: Path) -> None:
    """Two objects over three synthetic frames: the same masks, boxes, candidates, memories.
    At 1024 pixels, where one low-resolution mask cell covers ~2 video pixels (at 256 pixels ~40,
    and a logit at 0 rounded otherwise flips 7 of them). The same files on both engines (the
    main forms: the engines' timings would pick forms per engine, and cost a minute here)."""
    bundle = load_bundle(tiny_bundle)
    frames = synthetic_frames(3)
    boxes = [SYNTHETIC_BOX, (300.0, 220.0, 60.0, 60.0)]
    runs = {}
    for name, b in (("onnxruntime", bundle), ("openvino", openvino_bundle(bundle))):
        tracker = Tracker(b, threads=2, num_frames=len(frames), forms="main")
        steps = []
        for result in tracker.track(iter(frames), boxes):
            steps.append((result, [dataclasses.replace(s.last) for s in tracker.states if s.last]))
        runs[name] = (tracker.engine.describe(), steps)
    assert runs["openvino"][0].startswith("openvino") and "precision f32" in runs["openvino"][0]
    assert runs["onnxruntime"][0].startswith("onnxruntime")
    ort_steps, ov_steps = runs["onnxruntime"][1], runs["openvino"][1]
    assert len(ort_steps) == len(ov_steps) == len(frames)
    for (r_ort, info_ort), (r_ov, info_ov) in zip(ort_steps, ov_steps, strict=True):
        for a, b in zip(r_ort.objects, r_ov.objects, strict=True):
            assert a.box == b.box, r_ort.index
            differ = int(np.sum(a.mask != b.mask))
            assert differ <= 2, (r_ort.index, differ)  # fp32 rounding at a 0 logit, at most
        for a_info, b_info in zip(info_ort, info_ov, strict=True):
            assert a_info.candidate == b_info.candidate
            assert a_info.memory_frames == b_info.memory_frames
            assert a_info.pointer_frames == b_info.pointer_frames
            np.testing.assert_allclose(a_info.iou, b_info.iou, atol=1e-4)
            np.testing.assert_allclose(a_info.object_score, b_info.object_score, atol=1e-4)


# -- the compiler --------------------------------------------------------------------------------


def _spy_on_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``graph:precision`` of every graph the OpenVINO engine loads from here on."""
    loaded: list[str] = []
    real_load = OpenVinoEngine.load

    def spy(self: OpenVinoEngine, path: Path, spec: Any) -> Any:
        loaded.append(f"{spec.name}:{self.precision}")
        return real_load(self, path, spec)

    monkeypatch.setattr(OpenVinoEngine, "load", spy)
    return loaded


@requires_oracle
@pytest.mark.slow
def test_cpu_openvino_target_checks_run_on_openvino(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target compiles with its per-pass checks on OpenVINO, every shipped file checked
    there, with the tolerances declared for the bf16 it may run at."""
    from samurai_onnx.compiler.build import compile_bundle

    loaded = _spy_on_loads(monkeypatch)
    components = ["mask_decoder", "memory_encoder", "postprocess"]
    out = compile_bundle(
        REPO / "manifests" / "tiny.yaml",
        "cpu-openvino",
        checkpoint=tiny_checkpoint,
        out_dir=tmp_path / "tiny-cpu-openvino",
        components=components,
    )
    data = yaml.safe_load((out / "bundle.yaml").read_text())
    assert data["target"]["engine"] == "openvino"
    assert data["target"]["engine_options"]["precision"] == "auto"
    assert data["target"]["processing"] == "graph"
    # every file that ships is checked on OpenVINO: the model graphs after simplify (their raw
    # exports, which do not ship, on ONNX Runtime), postprocess once
    assert sorted(x.split(":")[0] for x in loaded) == [
        "mask_decoder", "memory_encoder", "postprocess"
    ]  # fmt: skip
    for name in ("mask_decoder", "memory_encoder"):  # declared for the bf16 it may run at
        assert data["components"][name]["tolerance"] == 1.0
        assert data["components"][name]["precision"] == "fp32"
        errors = data["components"][name]["max_abs_error"]
        assert errors and all(v <= 1.0 for v in errors.values())


@runs_bf16
def test_a_bf16_run_is_held_to_the_bf16_tolerance(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bf16 forced, and a manifest whose bf16 tolerance is fp32's: the check must fail, naming
    the key, and it ran on OpenVINO in bf16."""
    from samurai_onnx.compiler.build import compile_bundle
    from samurai_onnx.compiler.passes.verify import NumericError

    loaded = _spy_on_loads(monkeypatch)
    target = yaml.safe_load((REPO / "targets" / "cpu-openvino.yaml").read_text())
    target["engine_options"]["precision"] = "bf16"
    target["engine_options"]["cache_dir"] = None
    target_path = tmp_path / "cpu-openvino-bf16.yaml"
    target_path.write_text(yaml.safe_dump(target))
    manifest = yaml.safe_load((REPO / "manifests" / "tiny.yaml").read_text())
    manifest["components"]["mask_decoder"]["tolerance"]["bf16"] = 1.0e-4
    manifest_path = tmp_path / "tiny.yaml"
    manifest_path.write_text(yaml.safe_dump(manifest))
    with pytest.raises(NumericError, match=r"components\.mask_decoder\.tolerance\.bf16") as err:
        compile_bundle(
            manifest_path,
            target_path,
            checkpoint=tiny_checkpoint,
            out_dir=tmp_path / "bf16",
            components=["mask_decoder"],
        )
    assert loaded == ["mask_decoder:bf16"]
    print(f"\nmask decoder in bf16 vs PyTorch: {err.value}")


@requires_oracle
@pytest.mark.slow
def test_validate_runs_the_bundle_on_its_engine(
    tiny256_bundle: Path, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """samurai-validate on an OpenVINO bundle: graphs and tracker on OpenVINO, PASS at f32."""
    from conftest import write_frames

    from samurai_onnx.compiler.evaluate.validate import validate

    folder = tmp_path / "bundle"
    folder.mkdir()
    for f in tiny256_bundle.iterdir():
        if not f.name.startswith("bundle.yaml"):  # bundles refuse symlinks: links, or copies
            try:
                os.link(f, folder / f.name)
            except OSError:
                shutil.copy2(f, folder / f.name)
    data = yaml.safe_load((tiny256_bundle / "bundle.yaml").read_text())
    data["target"].update(engine="openvino", engine_options=F32)
    (folder / "bundle.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    seal_manifest(folder)  # bundle.yaml's digest
    loaded: list[str] = []
    real_load = OpenVinoEngine.load

    def spy(self: OpenVinoEngine, path: Path, spec: Any) -> Any:
        loaded.append(spec.name)
        return real_load(self, path, spec)

    monkeypatch.setattr(OpenVinoEngine, "load", spy)
    clip = write_frames(synthetic_frames(2), tmp_path / "clip")
    report = validate(folder, clip, SYNTHETIC_BOX, checkpoint=tiny_checkpoint, frames=2)
    print("\n" + report.to_markdown())
    assert set(MODEL_GRAPHS) <= set(loaded)  # per component and in the tracker
    assert {"preprocess", "postprocess"} <= set(loaded)
    assert report.precision == "fp32"
    assert report.ok
