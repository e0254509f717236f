"""The compiler end to end on random-weight checkpoints: the bundle of every target, the numeric
checks after every pass, determinism, the other model sizes, and ``scripts/export_onnx.py``.

Measured numbers (fp16 and int8 errors per output) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import gc
import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from conftest import REPO, build_oracle, requires_oracle

from samurai_onnx.compiler import __version__
from samurai_onnx.compiler.build import BuildError, compile_bundle
from samurai_onnx.compiler.checkpoint import randomize_state_dict, save_official_format
from samurai_onnx.compiler.graphs import example_inputs
from samurai_onnx.compiler.manifest import load_model_manifest
from samurai_onnx.compiler.modeling.sam2 import load_sam2
from samurai_onnx.compiler.passes.verify import DISCRETE_FLOORS, NumericError
from samurai_onnx.runtime.bundle import (
    COMPONENTS,
    FORMAT_VERSION,
    GRAPH_IO,
    TrackerSettings,
    load_bundle,
    sha256_file,
)
from samurai_onnx.runtime.session import create_session

pytestmark = [requires_oracle]

TINY = REPO / "manifests" / "tiny.yaml"
FLOAT, FLOAT16, INT64 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.INT64


def _manifest(root: Path) -> dict[str, Any]:
    return yaml.safe_load((root / "bundle.yaml").read_text())


def _feeds(graph: str, settings: TrackerSettings, **kw: Any) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in example_inputs(graph, settings, **kw).items()}


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = create_session(path, ("CPUExecutionProvider",))
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def _record(title: str, bundle: dict[str, Any]) -> None:
    print(f"\n{title}")
    for name, info in bundle["components"].items():
        errors = ", ".join(f"{k} {v:.3g}" for k, v in info["max_abs_error"].items())
        print(f"  {name:<17} {info['precision']:<6} tolerance {info['tolerance']:g}: {errors}")


# -- cpu (the tiny_bundle fixture) -----------------------------------------------------------------


def test_cpu_bundle_manifest(tiny_bundle: Path, tiny_checkpoint: Path) -> None:
    data = _manifest(tiny_bundle)
    manifest = load_model_manifest(TINY)
    assert data["format_version"] == FORMAT_VERSION
    assert data["compiler_version"] == __version__
    assert data["source_checkpoint"] == {
        "file": "sam2.1_hiera_tiny.pt",
        "sha256": hashlib.sha256(tiny_checkpoint.read_bytes()).hexdigest(),
    }
    assert data["model"] == {"name": "tiny", "config": manifest.model.to_dict()}
    assert data["target"]["name"] == "cpu" and data["target"]["precision"] == "fp32"
    tracker = data["tracker"]
    assert tracker["kf_score_weight"] == 0.25
    assert tracker["stable_frames_threshold"] == 15 and tracker["memory_shape"] == "dynamic"
    assert tracker == manifest.tracker.to_dict()
    assert list(data["components"]) == list(COMPONENTS)
    for name, info in data["components"].items():
        assert info["file"] == f"{name}.onnx" and info["graph"] == name
        assert info["sha256"] == sha256_file(tiny_bundle / info["file"])
        assert info["precision"] == "fp32"
        # the cpu target allows fused kernels: the manifest's fused lowering where it offers one
        fused = manifest.components[name].fused_attention
        assert info["attention"] == (fused or manifest.components[name].attention)
        assert [i["name"] for i in info["inputs"]] == list(GRAPH_IO[name]["inputs"])
        assert [o["name"] for o in info["outputs"]] == list(GRAPH_IO[name]["outputs"])
        spec = {s.name: s for s in manifest.components[name].inputs}
        for item in info["inputs"]:  # the manifest's dynamic axes, by name
            assert tuple(item["shape"]) == spec[item["name"]].shape, item
            assert item["dtype"] == spec[item["name"]].dtype
        batch = "batch" if name == "image_encoder" else "objects"
        for item in info["outputs"]:  # only the batch/objects axis varies
            assert item["dtype"] == "float32"
            assert item["shape"][0] == batch, item
            assert all(isinstance(d, int) and d > 0 for d in item["shape"][1:]), item
        assert set(info["max_abs_error"]) == set(GRAPH_IO[name]["outputs"])
        for output, err in info["max_abs_error"].items():
            assert 0 <= err <= max(1e-4, DISCRETE_FLOORS.get(output, 0.0)), (name, output, err)
        assert info["tolerance"] == 1e-4
    shapes = {i["name"]: i["shape"] for i in data["components"]["memory_attention"]["inputs"]}
    assert shapes["memory"] == ["objects", "num_memories", 64, 64, 64]
    assert shapes["obj_ptrs"] == ["objects", "num_pointers", 256]
    assert shapes["memory_tpos_index"] == ["num_memories"]


def test_cpu_bundle_loads_and_runs(tiny_bundle: Path) -> None:
    bundle = load_bundle(tiny_bundle)  # verifies every hash
    assert bundle.tracker.kf_score_weight == 0.25
    for name in COMPONENTS:
        session = ort.InferenceSession(str(bundle.file(name)), providers=["CPUExecutionProvider"])
        assert tuple(i.name for i in session.get_inputs()) == GRAPH_IO[name]["inputs"]
    # dynamic axes really are dynamic: 2 objects, other memory and pointer counts
    feeds = _feeds("memory_attention", bundle.tracker, objects=2, memories=2, pointers=9)
    out = _run(bundle.file("memory_attention"), feeds)["conditioned_features"]
    assert out.shape == (2, 256, 64, 64) and np.isfinite(out).all()


# -- cuda-fp16 -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fp16_bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fp16") / "tiny-cuda-fp16"
    return compile_bundle(TINY, "cuda-fp16", checkpoint=tiny_checkpoint, out_dir=out)


@pytest.mark.slow
def test_fp16_bundle(fp16_bundle: Path, tiny_bundle: Path) -> None:
    data = _manifest(fp16_bundle)
    _record("cuda-fp16 (tiny, random weights): max abs error vs PyTorch fp32", data)
    assert data["target"]["providers"][0] == "CUDAExecutionProvider"
    load_bundle(fp16_bundle)
    manifest = load_model_manifest(TINY)
    settings = manifest.tracker
    for name, info in data["components"].items():
        assert info["precision"] == "fp16"
        tolerance = manifest.components[name].tolerance["fp16"]
        assert info["tolerance"] == tolerance
        for output, err in info["max_abs_error"].items():  # the declared tolerance, with margin
            assert err <= max(tolerance / 4, DISCRETE_FLOORS.get(output, 0.0)), (name, output)
        model = onnx.load(str(fp16_bundle / info["file"]))
        # fp32 graph inputs and outputs ...
        for value in [*model.graph.input, *model.graph.output]:
            assert value.type.tensor_type.elem_type in (FLOAT, INT64), value.name
        # ... around fp16 weights and compute
        sizes = {FLOAT: 0, FLOAT16: 0}
        for init in model.graph.initializer:
            if init.data_type in sizes:
                sizes[init.data_type] += int(np.prod(init.dims))
        assert sizes[FLOAT16] > 0.95 * (sizes[FLOAT16] + sizes[FLOAT]), (name, sizes)
        assert sum(n.op_type == "Cast" for n in model.graph.node) >= 2
        # runs on the CPU provider here (CUDA requested, absent: warned fallback); the image
        # encoder, the slowest, only loads here (the build ran it on the CPU provider already)
        session = create_session(fp16_bundle / info["file"], tuple(data["target"]["providers"]))
        if name == "image_encoder":
            continue
        feeds = _feeds(name, settings, seed=1)
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(names, feeds), strict=True))
        want = _run(tiny_bundle / f"{name}.onnx", feeds)
        for output in names:
            assert got[output].dtype == np.float32
            limit = max(tolerance / 4, DISCRETE_FLOORS.get(output, 0.0))
            assert np.abs(got[output] - want[output]).max() <= limit, (name, output)


@pytest.mark.gpu
def test_fp16_bundle_on_cuda(request: pytest.FixtureRequest, tiny_bundle: Path) -> None:
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("CUDAExecutionProvider is not available (install onnxruntime-gpu and CUDA)")
    fp16_bundle: Path = request.getfixturevalue("fp16_bundle")
    settings = load_model_manifest(TINY).tracker
    for name in COMPONENTS:
        session = ort.InferenceSession(
            str(fp16_bundle / f"{name}.onnx"), providers=["CUDAExecutionProvider"]
        )
        assert session.get_providers()[0] == "CUDAExecutionProvider"
        feeds = _feeds(name, settings, seed=1)
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, session.run(names, feeds), strict=True))
        want = _run(tiny_bundle / f"{name}.onnx", feeds)
        tolerance = load_model_manifest(TINY).components[name].tolerance["fp16"]
        for output in names:
            limit = max(tolerance / 4, DISCRETE_FLOORS.get(output, 0.0))
            assert np.abs(got[output] - want[output]).max() <= limit, (name, output)


# -- ort-mobile ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ort_mobile_bundle(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = compile_bundle(TINY, "ort-mobile", checkpoint=tiny_checkpoint, out_dir=tmp_path / "m")
    data = _manifest(out)
    _record("ort-mobile (tiny, random weights): max abs error vs PyTorch fp32", data)
    bundle = load_bundle(out)
    assert bundle.tracker.memory_shape == "static"
    manifest = load_model_manifest(TINY)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["bundle.yaml", "bundle.yaml.sha256", *(f"{c}.ort" for c in COMPONENTS)]
    )
    for name, info in data["components"].items():
        path = out / info["file"]
        assert path.suffix == ".ort" and path.read_bytes()[4:8] == b"ORTM"  # ORT format
        quantized = manifest.components[name].quantization is not None
        assert info["precision"] == ("int8" if quantized else "fp32"), name
        tolerance = manifest.components[name].tolerance["int8" if quantized else "fp32"]
        assert info["tolerance"] == tolerance
        for output, err in info["max_abs_error"].items():
            assert err <= max(tolerance, DISCRETE_FLOORS.get(output, 0.0)), (name, output)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert tuple(i.name for i in session.get_inputs()) == GRAPH_IO[info["graph"]]["inputs"]
    attention = data["components"]["memory_attention"]
    assert attention["graph"] == "memory_attention_static"
    shapes = {i["name"]: i["shape"] for i in attention["inputs"]}
    assert shapes["memory"] == ["objects", 7, 64, 64, 64] and shapes["memory_valid"] == [7]
    assert shapes["obj_ptrs"] == ["objects", 16, 256] and shapes["obj_ptr_valid"] == [16]


# -- tensorrt: static memory attention == dynamic, whatever fills the empty slots ------------------


@pytest.mark.slow
def test_static_memory_attention_matches_dynamic(
    tiny_checkpoint: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    out = compile_bundle(
        TINY,
        "tensorrt",
        checkpoint=tiny_checkpoint,
        out_dir=tmp_path / "trt",
        components=["memory_attention"],
    )
    data = _manifest(out)
    info = data["components"]["memory_attention"]
    assert info["graph"] == "memory_attention_static" and info["precision"] == "fp32"
    assert data["target"]["providers"][0] == "TensorrtExecutionProvider"
    assert data["tracker"]["memory_shape"] == "static"
    settings = load_model_manifest(TINY).tracker
    n_slots, p_slots = settings.static_memory_slots, settings.static_pointer_slots
    static = create_session(out / info["file"], ("CPUExecutionProvider",))
    dynamic = create_session(tiny_bundle / "memory_attention.onnx", ("CPUExecutionProvider",))
    rng = np.random.default_rng(7)
    worst = control = 0.0
    for seed, (n, p) in enumerate([(1, 1), (3, 5), (n_slots, p_slots)]):
        real = _feeds("memory_attention", settings, seed=seed, memories=n, pointers=p)
        garbage = {  # the empty slots get random values, not zeros
            "memory": rng.normal(0, 3, (1, n_slots - n, 64, 64, 64)),
            "memory_pos_enc": rng.normal(0, 3, (1, n_slots - n, 64, 64, 64)),
            "memory_tpos_index": rng.integers(0, settings.num_maskmem, n_slots - n),
            "obj_ptrs": rng.normal(0, 3, (1, p_slots - p, 256)),
            "obj_ptr_offsets": rng.uniform(-1, 1, p_slots - p),
        }
        feeds = {k: v for k, v in real.items() if k not in garbage}
        for key, pad in garbage.items():
            axis = 0 if real[key].ndim == 1 else 1
            feeds[key] = np.concatenate([real[key], pad.astype(real[key].dtype)], axis=axis)
        feeds["memory_valid"] = (np.arange(n_slots) < n).astype(np.float32)
        feeds["obj_ptr_valid"] = (np.arange(p_slots) < p).astype(np.float32)
        (want,) = dynamic.run(None, real)
        (got,) = static.run(None, feeds)
        err = float(np.abs(got - want).max())
        worst = max(worst, err)
        assert err <= 1e-4, (n, p, err)
        if n == 1:  # control: the same garbage marked valid does change the result
            feeds["memory_valid"][:] = 1.0
            feeds["obj_ptr_valid"][:] = 1.0
            (unmasked,) = static.run(None, feeds)
            control = float(np.abs(unmasked - want).max())
            assert control > 1e-2, control
    print(
        f"\nstatic vs dynamic memory attention, garbage padding: max abs diff {worst:.3g} "
        f"(garbage marked valid: {control:.3g})"
    )


# -- determinism -----------------------------------------------------------------------------------


def test_rebuild_is_byte_identical(tiny_checkpoint: Path, tmp_path: Path) -> None:
    outs = [
        compile_bundle(
            TINY,
            "cpu",
            checkpoint=tiny_checkpoint,
            out_dir=tmp_path / f"b{i}",
            components=["memory_encoder"],
        )
        for i in range(2)
    ]
    a, b = (o / "memory_encoder.onnx" for o in outs)
    assert a.read_bytes() == b.read_bytes()
    ma, mb = (_manifest(o)["components"]["memory_encoder"] for o in outs)
    assert ma["sha256"] == mb["sha256"] == sha256_file(a)
    assert (outs[0] / "bundle.yaml").read_bytes() == (outs[1] / "bundle.yaml").read_bytes()
    assert sorted(p.name for p in outs[0].iterdir()) == [
        "bundle.yaml",
        "bundle.yaml.sha256",
        "memory_encoder.onnx",
    ]


# -- a pass that breaks the numbers, or crashes, fails the build -----------------------------------


def test_pass_that_breaks_numbers_fails(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import samurai_onnx.compiler.build as build

    real = build.simplify_graph

    def perturbing(src: Path, out: Path) -> Path:
        real(src, out)
        model = onnx.load(str(out))
        weights = [t for t in model.graph.initializer if t.data_type == FLOAT and len(t.dims) == 4]
        target = max(weights, key=lambda t: int(np.prod(t.dims)))  # the largest conv kernel
        array = onnx.numpy_helper.to_array(target) + np.float32(0.05)
        target.CopyFrom(onnx.numpy_helper.from_array(array, target.name))
        onnx.save(model, str(out))
        return out

    monkeypatch.setattr(build, "simplify_graph", perturbing)
    with pytest.raises(NumericError) as info:
        compile_bundle(
            TINY,
            "cpu",
            checkpoint=tiny_checkpoint,
            out_dir=tmp_path / "b",
            components=["memory_encoder"],
        )
    message = str(info.value)
    for needle in ("memory_encoder", "pass 'simplify'", "output maskmem_features", "tolerance"):
        assert needle in message, message
    assert f"{TINY}: components.memory_encoder.tolerance.fp32" in message
    assert not (tmp_path / "b" / "bundle.yaml").exists()
    assert not list((tmp_path / "b").glob("*.onnx"))


def test_pass_that_crashes_is_a_build_error(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import samurai_onnx.compiler.build as build

    def crashing(src: Path, out: Path) -> Path:
        raise RuntimeError("onnxsim exploded\nwith a second line")

    monkeypatch.setattr(build, "simplify_graph", crashing)
    with pytest.raises(BuildError) as info:
        compile_bundle(
            TINY,
            "cpu",
            checkpoint=tiny_checkpoint,
            out_dir=tmp_path / "b",
            components=["memory_encoder"],
        )
    message = str(info.value)
    assert "\n" not in message
    assert "memory_encoder: pass 'simplify' failed (RuntimeError: onnxsim exploded)" in message


# -- the other sizes: strict loading of a random checkpoint, one component exported ----------------


def test_strict_loading_refuses_mismatched_keys(tiny_checkpoint: Path) -> None:
    manifest = load_model_manifest(TINY)
    state = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["model"]
    state.pop("obj_ptr_tpos_proj.bias")
    with pytest.raises(ValueError, match=r"does not match SAM 2.1 tiny .*obj_ptr_tpos_proj"):
        load_sam2(manifest.model, state, source="x.pt")
    state["obj_ptr_tpos_proj.bias"] = torch.zeros(64)
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"extra\.weight"):
        load_sam2(manifest.model, state, source="x.pt")


@pytest.mark.slow
@pytest.mark.parametrize("size", ["small", "base_plus", "large"])
def test_other_sizes(size: str, tmp_path: Path) -> None:
    manifest = load_model_manifest(REPO / "manifests" / f"{size}.yaml")
    template = build_oracle(size).state_dict()
    state = randomize_state_dict(template, seed=1)
    del template
    model = load_sam2(manifest.model, state, source=f"random {size}")  # strict=True
    assert set(model.state_dict()) == set(state)
    del model
    ckpt = save_official_format(state, tmp_path / manifest.checkpoint.file)
    del state
    gc.collect()
    out = compile_bundle(
        manifest.path,
        "cpu",
        checkpoint=ckpt,
        out_dir=tmp_path / "b",
        components=["memory_encoder"],
    )
    data = _manifest(out)
    assert data["model"]["name"] == size
    assert data["tracker"]["kf_score_weight"] == (0.15 if size == "large" else 0.25)
    info = data["components"]["memory_encoder"]
    assert max(info["max_abs_error"].values()) <= 1e-4
    print(f"\n{size}: memory_encoder max abs error {info['max_abs_error']}")


# -- scripts/export_onnx.py ------------------------------------------------------------------------


def _export_script(*args: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "export_onnx.py"), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=REPO,
    )


def test_export_script(tiny_checkpoint: Path, tmp_path: Path) -> None:
    common = ["--components", "memory_encoder", "--model_name", "tiny"]
    common += ["--checkpoint", tiny_checkpoint]
    plain = _export_script(*common, "--output_dir", tmp_path / "plain")
    assert plain.returncode == 0, plain.stderr
    assert "export" in plain.stdout and "simplify" not in plain.stdout
    info = _manifest(tmp_path / "plain")["components"]["memory_encoder"]
    assert list(_manifest(tmp_path / "plain")["components"]) == ["memory_encoder"]
    assert info["inputs"][0]["shape"] == [1, 256, 64, 64]  # batch fixed without --dynamic_batch
    assert info["outputs"][0]["shape"] == [1, 64, 64, 64]

    opt = _export_script(*common, "--optimize", "--dynamic_batch", "--output_dir", tmp_path / "o")
    assert opt.returncode == 0, opt.stderr
    assert "simplify" in opt.stdout
    info = _manifest(tmp_path / "o")["components"]["memory_encoder"]
    assert info["inputs"][0]["shape"] == ["objects", 256, 64, 64]
    assert info["outputs"][0]["shape"] == ["objects", 64, 64, 64]
    session = ort.InferenceSession(
        str(tmp_path / "o" / "memory_encoder.onnx"), providers=["CPUExecutionProvider"]
    )
    feeds = _feeds("memory_encoder", load_model_manifest(TINY).tracker, objects=2)
    assert session.run(None, feeds)[0].shape == (2, 64, 64, 64)


def test_export_script_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    out = tmp_path / "out"
    proc = _export_script("--model_name", "tiny", "--checkpoint", bad, "--output_dir", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and str(bad) in errors[0], proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.pt"]  # nothing made, not even out/
    # a folder with other files is never taken for a bundle to replace
    proc = _export_script("--model_name", "tiny", "--checkpoint", bad, "--output_dir", tmp_path)
    assert proc.returncode == 2 and "is a folder that is not a bundle (bad.pt)" in proc.stderr
    proc = _export_script("--model_name", "tiny", "--components", "prompt_encoder")
    assert proc.returncode == 2 and "unknown component(s) prompt_encoder" in proc.stderr
    proc = _export_script("--model_name", "huge")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
