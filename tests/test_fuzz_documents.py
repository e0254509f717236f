"""Fuzz suite, untrusted documents: model manifests, target manifests, bundle.yaml, JSON.

Every case must end in a one-line ``ManifestError``/``BundleError`` (from the CLIs: exit code 2,
one ``error:`` line, no traceback) or a valid result, within a memory bound, and leave every
file as it was. Table-driven cases are the ones found by hand (YAML alias bombs, tampered
bundle.yaml fields, out-of-range settings); the hypothesis cases mutate one key of a valid
document at a time (or feed arbitrary text). No case builds or runs a model.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REPO
from fuzz_support import COMPILE, RUN, assert_one_error, fake_bundle, run_bounded, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from samurai_onnx.compiler.manifest import ManifestError, load_model_manifest, load_target_manifest
from samurai_onnx.runtime import cli as run_cli
from samurai_onnx.runtime.bundle import (
    COMPONENTS,
    MANIFEST_NAME,
    BundleError,
    TrackerSettings,
    check_overrides,
    load_bundle,
    seal_manifest,
)
from samurai_onnx.runtime.documents import (
    MAX_DEPTH,
    DocumentError,
    check_threads,
    load_json,
    parse_json,
    parse_yaml,
    short,
)

TINY = REPO / "manifests" / "tiny.yaml"
CPU = REPO / "targets" / "cpu.yaml"
FUZZ = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# 4 KB that expand to 10^9 list items once something walks the aliases.
ALIAS_BOMB = "\n".join(
    [
        "a: &a [x, x, x, x, x, x, x, x, x, x]",
        *(
            f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]"
            for p, n in zip("abcdefgh", "bcdefghi", strict=True)
        ),
    ]
)


def one_line(message: str, limit: int = 1200) -> None:
    assert "\n" not in message and len(message) <= limit, message[:2000]


def write_bundle_yaml(root: Path, text: str) -> None:
    (root / MANIFEST_NAME).write_text(text)
    seal_manifest(root)


# -- the safe reader -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (ALIAS_BOMB + "\nname: *i\n", "anchors and aliases"),
        ("base: &b {x: 1}\nother: *b\n", "anchors and aliases"),
        ("name: !!python/object/apply:os.system [echo hi]\n", "could not determine"),
        ("x: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n", "nested deeper"),
        ("x: [1, 2\n", "not valid YAML"),
    ],
)
def test_yaml_refusals(text: str, needle: str) -> None:
    with pytest.raises(DocumentError) as info:
        parse_yaml(text, where="doc.yaml")
    one_line(str(info.value))
    assert needle in str(info.value)


def test_size_limit_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("x: [" + "0, " * 600_000 + "0]\n")  # 1.8 MB
    for loader in (load_model_manifest, load_target_manifest):
        with pytest.raises(ManifestError, match="larger than 1024 KiB"):
            loader(big)
    with pytest.raises(DocumentError, match="larger than"):
        load_json(big)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"score": NaN}', "NaN is not a JSON number"),
        ('{"score": -Infinity}', "-Infinity is not a JSON number"),
        ("[" * 5000 + "]" * 5000, "not valid JSON"),
        ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested deeper"),
        ('{"x": 1' + "0" * 6000 + "}", "not valid JSON"),
        ('{"a": 1,}', "line 1"),
    ],
)
def test_json_refusals(text: str, needle: str) -> None:
    with pytest.raises(DocumentError) as info:
        parse_json(text, where="prompts.json")
    one_line(str(info.value))
    assert needle in str(info.value), str(info.value)


def test_short_never_expands() -> None:
    node: Any = ["x"]
    for _ in range(60):  # 2^60 leaves if walked
        node = [node, node]
    assert len(short(node)) <= 60
    assert len(short({"k" * 10_000: 10**5000})) <= 60
    assert short(float("nan")) == "nan"


# -- manifests -----------------------------------------------------------------------------------


def _write(tmp_path: Path, source: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    data = yaml.safe_load(source.read_text())
    edit(data)
    path = tmp_path / source.name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _setter(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return edit


# (key, value, what the message must say): ranges that used to be accepted silently or crash
MODEL_RANGES = [
    ("model.image_size", -1024, "model.image_size"),
    ("model.image_size", 1000, "multiple of 32"),
    ("model.hiera.embed_dim", -96, "model.hiera.embed_dim"),
    ("model.hiera.stages", [1, 2, 0, 2], "model.hiera.stages[2]"),
    ("model.hiera.stages", [1, 2, 7], "exactly 4 stages"),
    ("model.hiera.num_heads", 5, "divisible by num_heads"),
    ("model.num_maskmem", 0, "model.num_maskmem"),
    ("model.rope_theta", float("inf"), "model.rope_theta"),
    ("model.d_model", 100, "multiple of mem_dim"),
    ("tracker.kf_score_weight", 7.5, "between 0 and 1"),
    ("tracker.stable_frames_threshold", -3, "tracker.stable_frames_threshold"),
    ("tracker.memory_bank_iou_threshold", 5, "between -1 and 1"),
    ("tracker.fill_hole_area", -5, "tracker.fill_hole_area"),
    ("tracker.image_std", [0, 0, 0], "tracker.image_std[0]"),
    ("tracker.min_obj_score_logits", float("nan"), "tracker.min_obj_score_logits"),
    ("name", "x" * 100_000, "is not one of"),
    ("checkpoint.url", ["y" * 100_000], "checkpoint.url"),
]


@pytest.mark.parametrize(("key", "value", "needle"), MODEL_RANGES)
def test_model_manifest_ranges(tmp_path: Path, key: str, value: Any, needle: str) -> None:
    path = _write(tmp_path, TINY, _setter(key, value))
    with pytest.raises(ManifestError) as info:
        load_model_manifest(path)
    one_line(str(info.value), 400)
    assert str(info.value).startswith(f"{path}: ") and needle in str(info.value)


def test_model_manifest_alias_bomb_cli(tmp_path: Path) -> None:
    """The 4 KB manifest that took 8.2 GB and 94 s: one short line, quickly, little memory."""
    bomb = tmp_path / "tiny.yaml"
    bomb.write_text(TINY.read_text() + "\n" + ALIAS_BOMB + "\n")
    before = snapshot(tmp_path)
    result = run_bounded([*COMPILE, str(bomb), "--out", str(tmp_path / "b")], limit_mb=3072)
    assert_one_error(result.code, result.stderr, "anchors and aliases", str(bomb))
    assert result.peak_rss_mb < 1500 and result.seconds < 60, result
    assert snapshot(tmp_path) == before


def _paths(data: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path of plain data (dict keys, list indices)."""
    out = [prefix] if prefix else []
    if isinstance(data, dict):
        for k, v in data.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += _paths(v, (*prefix, i))
    return out


VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from([0, -1, 1, 2**63, 1e308, "", "none", "dynamic", "fp16", [], {}]),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutations(draw: st.DrawFn, source: dict[str, Any]) -> dict[str, Any]:
    """``source`` with one key replaced, deleted, or one unknown key added."""
    data = copy.deepcopy(source)
    path = draw(st.sampled_from(_paths(data)))
    *parents, last = path
    node = data
    for key in parents:
        node = node[key]
    action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
    if action == "delete":
        del node[last]
    elif action == "add" and isinstance(node, dict):
        node[draw(st.text(min_size=1, max_size=12))] = draw(VALUES)
    else:
        node[last] = draw(VALUES)
    return data


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


TINY_DATA = yaml.safe_load(TINY.read_text())
CPU_DATA = yaml.safe_load(CPU.read_text())


@FUZZ
@given(data=mutations(TINY_DATA))
def test_fuzz_model_manifest(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(_dump(data))
    try:
        manifest = load_model_manifest(path)
    except ManifestError as exc:
        one_line(str(exc))
        assert str(exc).startswith(str(path))
    else:  # accepted: every number is in its range (the rules ran)
        assert 0 <= manifest.tracker.kf_score_weight <= 1
        assert manifest.model.image_size % 32 == 0 and manifest.model.hiera.embed_dim > 0


@FUZZ
@given(data=mutations(CPU_DATA))
def test_fuzz_target_manifest(tmp_path: Path, data: dict[str, Any]) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(_dump(data))
    try:
        target = load_target_manifest(path)
    except ManifestError as exc:
        one_line(str(exc))
    else:
        assert target.providers and 17 <= target.opset <= 20


@FUZZ
@given(text=st.text(max_size=400))
def test_fuzz_manifest_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_model_manifest(path)
    one_line(str(info.value))


# -- bundle.yaml ---------------------------------------------------------------------------------


@pytest.fixture()
def bundle(tmp_path: Path) -> Path:
    return fake_bundle(tmp_path / "bundle")


def test_fake_bundle_loads(bundle: Path) -> None:
    """The placeholder bundle reads as a bundle (its graphs are only opened by a Tracker)."""
    assert set(load_bundle(bundle).components) == set(COMPONENTS)


TAMPERED: list[tuple[str, Any, str]] = [
    ("target.providers", 5, "target.providers"),
    ("target", [1, 2], "target"),
    ("model", [1], "model"),
    ("source_checkpoint", "abc", "source_checkpoint"),
    ("source_checkpoint.sha256", "abc", "64 hex"),
    ("tracker.num_maskmem", 0, "tracker.num_maskmem"),
    ("tracker.image_size", 0, "tracker.image_size"),
    ("tracker.image_std", [0, 0, 0], "tracker.image_std[0]"),
    ("tracker.kf_score_weight", 7.5, "between 0 and 1"),
    ("tracker.stable_frames_threshold", -3, "stable_frames_threshold"),
    ("tracker.memory_bank_iou_threshold", 5, "between -1 and 1"),
    ("tracker.fill_hole_area", -5, "fill_hole_area"),
    ("tracker.feat_size", 32, "do not fit together"),
    ("tracker.memory_shape", "static", None),  # valid: 7 and 16 slots hold 7 and 16
    ("components.mask_decoder.tolerance", "x", "components.mask_decoder.tolerance"),
    ("components.mask_decoder.file", ["a"], "components.mask_decoder.file"),
    ("components.prompt_encoder", {}, "unknown key(s) prompt_encoder"),
    ("compiler_version", {"x": 1}, "compiler_version"),
    ("target.provider_options", {"CPUExecutionProvider": 3}, "provider_options"),
    ("target.depthwise", "separable", "target.depthwise"),
    ("target.depthwise", ["dense"], "target.depthwise"),
    ("target.depthwise", "dense", None),  # valid
    ("target.prefetch", 1, "target.prefetch"),
    ("target.prefetch", True, None),  # valid
]


@pytest.mark.parametrize(("key", "value", "needle"), TAMPERED)
def test_tampered_bundle_yaml(bundle: Path, key: str, value: Any, needle: str | None) -> None:
    data = yaml.safe_load((bundle / MANIFEST_NAME).read_text())
    _setter(key, value)(data)
    write_bundle_yaml(bundle, _dump(data))
    if needle is None:
        load_bundle(bundle)
        return
    with pytest.raises(BundleError) as info:
        load_bundle(bundle)
    one_line(str(info.value), 600)
    assert needle in str(info.value), str(info.value)


@FUZZ
@given(data=st.data())
def test_fuzz_bundle_yaml(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    root = fake_bundle(tmp_path_factory.mktemp("b"))
    source = yaml.safe_load((root / MANIFEST_NAME).read_text())
    write_bundle_yaml(root, _dump(data.draw(mutations(source))))
    try:
        bundle = load_bundle(root)
    except BundleError as exc:
        one_line(str(exc))
    else:
        s = bundle.tracker
        assert s.num_maskmem >= 1 and all(v > 0 for v in s.image_std)
        assert all(math.isfinite(v) for v in dataclasses.astuple(s) if isinstance(v, float))


@FUZZ
@given(text=st.text(max_size=300))
def test_fuzz_bundle_yaml_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    root = fake_bundle(tmp_path_factory.mktemp("b"))
    write_bundle_yaml(root, text)
    with pytest.raises(BundleError) as info:
        load_bundle(root)
    one_line(str(info.value))


def test_bundle_alias_bomb_cli(bundle: Path, tmp_path: Path) -> None:
    """The 4 KB bundle.yaml that grew samurai-run past 13 GB: refused while parsing."""
    text = (bundle / MANIFEST_NAME).read_text() + "\n" + ALIAS_BOMB + "\n"
    write_bundle_yaml(bundle, text.replace("fill_hole_area: 8", "fill_hole_area: *i"))
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"never read")
    before = snapshot(tmp_path)
    result = run_bounded(
        [*RUN, str(bundle), str(clip), "--bbox", "1,2,3,4", "--jsonl", str(tmp_path / "o.jsonl")],
        limit_mb=2048,
    )
    assert_one_error(result.code, result.stderr, "anchors and aliases")
    assert result.peak_rss_mb < 600 and result.seconds < 30, result
    assert snapshot(tmp_path) == before


def test_bundle_digest_mismatch_cli(bundle: Path, tmp_path: Path) -> None:
    path = bundle / MANIFEST_NAME
    path.write_text(path.read_text().replace("kf_score_weight: 0.25", "kf_score_weight: 0.3"))
    code, err = _run_in_process(bundle, tmp_path)
    assert_one_error(code, err, "does not match its digest")


def _run_in_process(bundle: Path, tmp_path: Path, *extra: str) -> tuple[int, str]:
    clip = tmp_path / "clip.mp4"
    if not clip.exists():
        clip.write_bytes(b"never read")
    args = [str(bundle), str(clip), "--bbox", "1,2,3,4", "--jsonl", str(tmp_path / "o.jsonl")]
    result = CliRunner().invoke(run_cli.app, [*args, *extra])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


# -- API settings: one rule set ------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"fill_hole_area": -3},
        {"kf_score_weight": 7.5},
        {"stable_frames_threshold": -3},
        {"memory_bank_iou_threshold": 5},
        {"image_std": (0.0, 0.0, 0.0)},
        {"num_maskmem": 0},
        {"kf_score_weight": "0.25"},
    ],
)
def test_api_overrides_follow_the_rules(changes: dict[str, Any]) -> None:
    base = TrackerSettings()
    with pytest.raises(BundleError) as info:
        dataclasses.replace(base, **changes)  # what the Tracker does with overrides today
    one_line(str(info.value), 300)
    with pytest.raises(ValueError) as info2:
        check_overrides(base, changes, error=ValueError)
    assert next(iter(changes)) in str(info2.value)


def test_api_overrides_fixed_and_unknown() -> None:
    with pytest.raises(BundleError, match="follow"):
        check_overrides(TrackerSettings(), {"image_size": 512})
    with pytest.raises(BundleError, match="unknown tracker setting"):
        check_overrides(TrackerSettings(), {"kf_weight": 0.2})
    assert check_overrides(TrackerSettings(), {"fill_hole_area": 0}).fill_hole_area == 0


@pytest.mark.parametrize("threads", [-1, 0, 10**6, 1.5, "2", True])
def test_threads_rule(threads: Any, bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(DocumentError):
        check_threads(threads)
    if isinstance(threads, int) and not isinstance(threads, bool):
        code, err = _run_in_process(bundle, tmp_path, "--threads", str(threads))
        assert_one_error(code, err, "--threads")
    assert check_threads(None) is None and check_threads(2) == 2
