"""Manifest errors: a valid manifest broken one key at a time gives a ``ManifestError`` that names
the file and the key path, and ``samurai-compile`` turns it into one ``error:`` line, exit 2.
"""

from __future__ import annotations

import copy
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from typer.testing import CliRunner

from samurai_onnx.compiler.cli import app
from samurai_onnx.compiler.manifest import (
    ManifestError,
    load_model_manifest,
    load_target_manifest,
)

Edit = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Edit:
    """An edit that sets ``a.b.c`` (``[i]`` indexes lists) to ``value``."""

    def edit(data: dict[str, Any]) -> None:
        node: Any = data
        keys = path.replace("[", ".[").split(".")
        for key in keys[:-1]:
            node = node[int(key[1:-1])] if key.startswith("[") else node[key]
        last = keys[-1]
        if last.startswith("["):
            node[int(last[1:-1])] = value
        else:
            node[last] = value

    return edit


def _delete(path: str) -> Edit:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        del node[last]

    return edit


def _write(tmp_path: Path, source: Path, edit: Edit) -> Path:
    data = yaml.safe_load(source.read_text())
    edited = copy.deepcopy(data)
    edit(edited)
    path = tmp_path / "broken" / source.name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(edited, sort_keys=False))
    return path


def _check(message: str, path: Path, *needles: str) -> None:
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"


TINY = REPO / "manifests" / "tiny.yaml"
CPU = REPO / "targets" / "cpu.yaml"

# (edit, key path the message must name, what it must also say)
MODEL_CASES: dict[str, tuple[Edit, str, str]] = {
    "unknown_top": (_set("colour", "red"), "colour", "unknown key"),
    "unknown_component_key": (
        _set("components.image_encoder.atention", "matmul"),
        "components.image_encoder",
        "atention",
    ),
    "unknown_hiera_key": (_set("model.hiera.embed_dims", 96), "model.hiera", "embed_dims"),
    "unknown_model_key": (_set("model.d_modle", 256), "model", "d_modle"),
    "unknown_tracker_key": (_set("tracker.kf_score_weigth", 0.2), "tracker", "kf_score_weigth"),
    "unknown_checkpoint_key": (_set("checkpoint.md5", "x"), "checkpoint", "md5"),
    "unknown_component": (_set("components.prompt_encoder", {}), "components", "prompt_encoder"),
    "name_type": (_set("name", 3), "name", "expected str"),
    "name_value": (_set("name", "huge"), "name", "tiny, small, base_plus, large"),
    "name_missing": (_delete("name"), "name", "missing"),
    "checkpoint_type": (_set("checkpoint", "sam2.1_hiera_tiny.pt"), "checkpoint", "expected dict"),
    "url_type": (_set("checkpoint.url", 5), "checkpoint.url", "expected str"),
    "sha256_value": (_set("checkpoint.sha256", "abc"), "checkpoint.sha256", "64 hex"),
    "model_type": (_set("model", [1, 2]), "model", "mapping"),
    "hiera_int_as_str": (_set("model.hiera.embed_dim", "96"), "model.hiera.embed_dim", "int"),
    "hiera_int_as_float": (_set("model.hiera.num_heads", 1.5), "model.hiera.num_heads", "int"),
    "hiera_list_items": (_set("model.hiera.stages", [1, "2", 7, 2]), "model.hiera.stages", "int"),
    "hiera_pair_length": (_set("model.hiera.q_stride", [2]), "model.hiera.q_stride", "list of 2"),
    "hiera_list_type": (_set("model.hiera.global_att_blocks", 5), "global_att_blocks", "list"),
    "model_float_type": (_set("model.rope_theta", "1e4"), "model.rope_theta", "float"),
    "tracker_float_type": (
        _set("tracker.kf_score_weight", "high"),
        "tracker.kf_score_weight",
        "float",
    ),
    "tracker_int_type": (_set("tracker.fill_hole_area", 8.5), "tracker.fill_hole_area", "int"),
    "tracker_bool_type": (
        _set("tracker.memory_bf16", "yes please"),
        "tracker.memory_bf16",
        "bool",
    ),
    "tracker_derived": (_set("tracker.image_size", 512), "tracker.image_size", "model"),
    "tracker_type": (_set("tracker", [1]), "tracker", "mapping"),
    "components_type": (_set("components", ["image_encoder"]), "components", "expected dict"),
    "component_type": (_set("components.mask_decoder", "none"), "components.mask_decoder", "map"),
    "missing_component": (_delete("components.mask_decoder"), "components", "mask_decoder"),
    "inputs_present": (
        _set("components.image_encoder.inputs", [{"name": "image"}]),
        "components.image_encoder.inputs",
        "graph contract",
    ),
    "bad_attention": (
        _set("components.memory_attention.attention", "flash"),
        "components.memory_attention.attention",
        "matmul, sdpa",
    ),
    "int8_lowering_by_name": (  # a graph form for int8 targets, not a lowering to choose
        _set("components.memory_attention.attention.fallback", "int8"),
        "components.memory_attention.attention.fallback",
        "matmul, sdpa, ort_mha",
    ),
    "int8_attention_type": (
        _set("components.memory_attention.attention.int8", "yes"),
        "components.memory_attention.attention.int8",
        "true or false",
    ),
    "blocked_lowering_by_name": (  # a graph form, not a lowering to choose
        _set("components.memory_attention.attention.fallback", "blocked"),
        "components.memory_attention.attention.fallback",
        "matmul, sdpa, ort_mha",
    ),
    "blocked_attention_type": (
        _set("components.memory_attention.attention.blocked", 2),
        "components.memory_attention.attention.blocked",
        "expected true or false, got 2",
    ),
    "quantization_value": (
        _set("components.image_encoder.quantization", "int4"),
        "components.image_encoder.quantization",
        "'none'",
    ),
    "quantization_mode": (
        _set("components.image_encoder.quantization.mode", "static"),
        "components.image_encoder.quantization.mode",
        "dynamic",
    ),
    "quantization_per_channel": (
        _set("components.image_encoder.quantization.per_channel", "yes"),
        "components.image_encoder.quantization.per_channel",
        "expected true or false",
    ),
    "quantization_ops": (
        _set("components.image_encoder.quantization.op_types", "MatMul"),
        "components.image_encoder.quantization.op_types",
        "list",
    ),
    "tolerance_type": (
        _set("components.mask_decoder.tolerance.fp16", "big"),
        "components.mask_decoder.tolerance.fp16",
        "positive number",
    ),
    "tolerance_negative": (
        _set("components.mask_decoder.tolerance.fp32", -1.0e-4),
        "components.mask_decoder.tolerance.fp32",
        "positive",
    ),
    "tolerance_key": (
        _set("components.mask_decoder.tolerance.int4", 0.5),
        "components.mask_decoder.tolerance",
        "int4",
    ),
    "tolerance_mapping": (
        _set("components.mask_decoder.tolerance", 0.5),
        "components.mask_decoder.tolerance",
        "mapping",
    ),
}

TARGET_CASES: dict[str, tuple[Edit, str, str]] = {
    "unknown_key": (_set("precison", "fp16"), "precison", "unknown key"),
    "name_missing": (_delete("name"), "name", "missing"),
    "name_type": (_set("name", ["cpu"]), "name", "expected str"),
    "precision": (_set("precision", "fp8"), "precision", "fp32, fp16"),
    "precision_type": (_set("precision", 16), "precision", "fp32, fp16"),
    "quantization": (_set("quantization", "int4"), "quantization", "none, int8"),
    "format": (_set("format", "tflite"), "format", "onnx, ort"),
    "memory_shape": (_set("memory_shape", "ragged"), "memory_shape", "dynamic, static"),
    "depthwise": (_set("depthwise", "separable"), "depthwise", "grouped, dense"),
    "alternatives_type": (_set("alternatives", "dense"), "alternatives", "expected a list"),
    "alternatives_name": (_set("alternatives", ["dense", "nhwc"]), "alternatives[1]", "dense, unfused, gemm, layernorm, int8attn, u8attn, blocked"),
    "alternatives_twice": (_set("alternatives", ["dense", "dense"]), "alternatives", "at most once"),
    "alternatives_dense_main": (
        lambda d: d.update(depthwise="dense", alternatives=["dense"]),
        "alternatives",
        "already the main form",
    ),
    "alternatives_unfused_main": (
        lambda d: d.update(fused_attention=False, alternatives=["unfused"]),
        "alternatives",
        "needs fused_attention: true",
    ),
    "alternatives_int8attn_fp32": (
        _set("alternatives", ["int8attn"]),  # the base target (cpu) keeps fp32
        "alternatives",
        "needs quantization: int8",
    ),
    "alternatives_u8attn_fp32": (
        _set("alternatives", ["u8attn"]),
        "alternatives",
        "u8attn (attention scores in int8) is not exact",
    ),
    "attention_blocks_type": (
        _set("attention_blocks", 1), "attention_blocks", "expected true or false"
    ),
    "attention_blocks_fused": (  # the base target (cpu) has fused attention
        _set("attention_blocks", True), "attention_blocks", "set fused_attention: false"
    ),
    "alternatives_blocked_main": (
        lambda d: d.update(fused_attention=False, attention_blocks=True, alternatives=["blocked"]),
        "alternatives",
        "blocked is already the main form",
    ),
    "processing": (_set("processing", "gpu"), "processing", "graph, host"),
    "prefetch": (_set("prefetch", "yes"), "prefetch", "expected true or false"),
    "fused_attention": (_set("fused_attention", 1), "fused_attention", "expected true or false"),
    "opset_low": (_set("opset", 16), "opset", "17..20"),
    "opset_high": (_set("opset", 22), "opset", "17..20"),
    "opset_type": (_set("opset", "17"), "opset", "expected int"),
    "opset_bool": (_set("opset", True), "opset", "expected int"),
    "providers_empty": (_set("providers", []), "providers", "non-empty list"),
    "providers_type": (_set("providers", "CPUExecutionProvider"), "providers", "expected list"),
    "provider_typo": (
        _set("providers", ["CUDAExecutionProvidr", "CPUExecutionProvider"]),
        "providers",
        "did you mean 'CUDAExecutionProvider'",
    ),
    "provider_options_type": (_set("provider_options", [1]), "provider_options", "mapping"),
    "provider_options_value": (
        _set("provider_options", {"CPUExecutionProvider": 3}),
        "provider_options.CPUExecutionProvider",
        "mapping",
    ),
    "provider_options_other": (
        _set("provider_options", {"TensorrtExecutionProvider": {"trt_fp16_enable": True}}),
        "provider_options.TensorrtExecutionProvider",
        "not one of this target's providers",
    ),
}


def test_valid_manifests_load() -> None:
    for size in ("tiny", "small", "base_plus", "large"):
        m = load_model_manifest(REPO / "manifests" / f"{size}.yaml")
        assert m.name == size and load_model_manifest(size).path.name == f"{size}.yaml"
        assert m.tracker.kf_score_weight == (0.15 if size == "large" else 0.25)
        # the int8attn form pays where the score matrix is large (README "Speed")
        offered = [n for n, c in m.components.items() if c.int8_attention]
        assert offered == ["memory_attention"]
        # so does the blocked form (tests/test_blocked_attention.py)
        assert [n for n, c in m.components.items() if c.blocked_attention] == offered
    for target in ("cpu", "cpu-int8", "cuda", "cuda-fp16", "ort-mobile", "tensorrt"):
        assert load_target_manifest(REPO / "targets" / f"{target}.yaml").name == target
        assert load_target_manifest(target).name == target


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_model_manifest_error(case: str, tmp_path: Path) -> None:
    edit, key, needle = MODEL_CASES[case]
    path = _write(tmp_path, TINY, edit)
    with pytest.raises(ManifestError) as info:
        load_model_manifest(path)
    _check(str(info.value), path, key, needle)


@pytest.mark.parametrize("case", sorted(TARGET_CASES))
def test_target_manifest_error(case: str, tmp_path: Path) -> None:
    edit, key, needle = TARGET_CASES[case]
    path = _write(tmp_path, CPU, edit)
    with pytest.raises(ManifestError) as info:
        load_target_manifest(path)
    _check(str(info.value), path, key, needle)


BROKEN_TEXT = {
    "invalid_yaml": ("name: tiny\ncomponents: {image_encoder: [\n  bad: : x\n", "not valid YAML"),
    "tab_indent": ("name: tiny\n\tcheckpoint: {}\n", "not valid YAML"),
    "list_top": ("- name\n- tiny\n", "mapping"),
    "scalar_top": ("tiny\n", "mapping"),
    "empty": ("", "mapping"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_TEXT))
@pytest.mark.parametrize("loader", [load_model_manifest, load_target_manifest])
def test_unreadable_manifest(case: str, loader: Callable[[Path], Any], tmp_path: Path) -> None:
    text, needle = BROKEN_TEXT[case]
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as info:
        loader(path)
    _check(str(info.value), path, needle)
    if case == "invalid_yaml":
        assert "line 3" in str(info.value)


def test_missing_and_unknown_names(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="no such manifest file"):
        load_model_manifest(tmp_path / "nope.yaml")
    with pytest.raises(ManifestError, match="known: base_plus, large, small, tiny"):
        load_model_manifest("huge")
    with pytest.raises(ManifestError, match="known: cpu, cpu-int8, cpu-openvino, cuda, cuda-fp16, ort-mobile"):
        load_target_manifest("gpu")


@pytest.fixture()
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No cached checkpoint and no network: a test that reaches the checkpoint step fails."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setenv("SAMURAI_ONNX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _cli_error(args: list[Any]) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    err = result.stderr.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    return err.removeprefix("error: ")


@pytest.mark.parametrize("case", ["bad_attention", "missing_component", "tracker_float_type"])
def test_cli_broken_model_manifest(case: str, tmp_path: Path, offline: None) -> None:
    edit, key, needle = MODEL_CASES[case]
    path = _write(tmp_path, TINY, edit)
    _check(_cli_error([path, "--out", tmp_path / "b"]), path, key, needle)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("case", ["precision", "opset_high"])
def test_cli_broken_target_manifest(case: str, tmp_path: Path, offline: None) -> None:
    edit, key, needle = TARGET_CASES[case]
    path = _write(tmp_path, CPU, edit)
    _check(_cli_error([TINY, "--target", path, "--out", tmp_path / "b"]), path, key, needle)


def test_cli_invalid_yaml(tmp_path: Path, offline: None) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(BROKEN_TEXT["invalid_yaml"][0])
    _check(_cli_error([path, "--out", tmp_path / "b"]), path, "not valid YAML", "line 3")
    err = _cli_error(["huge", "--out", tmp_path / "b"])
    assert "no such manifest" in err


