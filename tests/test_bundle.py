"""Bundle loading errors: a copy of a built bundle, broken one way at a time, gives a one-line
``BundleError`` that says what is wrong and what to do; files outside the bundle are refused.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from samurai_onnx.runtime.bundle import (
    COMPONENTS,
    DIGEST_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    BundleError,
    load_bundle,
    seal_manifest,
)


def _copy_bundle(src: Path, dst: Path) -> Path:
    """A copy of ``src``: bundle.yaml copied, the graphs hard-linked (copied where links fail).

    Never modify a linked graph in place: ``_own_copy`` it first.
    """
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.is_file():
            if item.name in (MANIFEST_NAME, DIGEST_NAME):
                shutil.copyfile(item, dst / item.name)
                continue
            try:
                os.link(item, dst / item.name)
            except OSError:
                shutil.copyfile(item, dst / item.name)
    return dst


def _own_copy(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()
    path.write_bytes(data)


def _edit(root: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    """Change bundle.yaml and re-seal it (its digest updated), as a deliberate edit would."""
    path = root / MANIFEST_NAME
    data = yaml.safe_load(path.read_text())
    fn(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    seal_manifest(root)


def _write(root: Path, text: str) -> None:
    (root / MANIFEST_NAME).write_text(text)
    seal_manifest(root)


@pytest.fixture()
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    return _copy_bundle(tiny_bundle, tmp_path / "bundle")


def _error(path: Path, *needles: str, verify_hashes: bool = True) -> str:
    with pytest.raises(BundleError) as info:
        load_bundle(path, verify_hashes=verify_hashes)
    message = str(info.value)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    return message


def test_copy_loads(bundle: Path) -> None:
    b = load_bundle(bundle)
    assert b.format_version == FORMAT_VERSION and set(b.components) == set(COMPONENTS)
    assert b.file("memory_encoder") == bundle / "memory_encoder.onnx"


def test_missing_file(bundle: Path) -> None:
    (bundle / "memory_encoder.onnx").unlink()
    _error(bundle, "components.memory_encoder", "memory_encoder.onnx is missing", "rebuild")


def test_hash_mismatch(bundle: Path) -> None:
    graph = bundle / "memory_encoder.onnx"
    _own_copy(graph)
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte in the middle (inside the weights)
    graph.write_bytes(bytes(data))
    _error(bundle, "memory_encoder.onnx", "does not match its sha256", "rebuild or re-copy")
    load_bundle(bundle, verify_hashes=False)  # the check is the hash, nothing else


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, FORMAT_VERSION - 1, 0, "1", True, None])
def test_unknown_format_version(bundle: Path, version: Any) -> None:
    _edit(bundle, lambda d: d.__setitem__("format_version", version))
    _error(bundle, f"format version {version!r}", f"reads version {FORMAT_VERSION}", "rebuild")


@pytest.mark.parametrize("where", ["parent", "absolute", "nested", "symlink"])
def test_file_outside_bundle_refused(bundle: Path, where: str) -> None:
    outside = bundle.parent / "x.onnx"
    shutil.copyfile(bundle / "memory_encoder.onnx", outside)  # exists, same hash: only the
    # location is wrong
    if where == "parent":
        name = "../x.onnx"
    elif where == "absolute":
        name = str(outside)
    elif where == "nested":
        name = "sub/../../x.onnx"
    else:
        (bundle / "link.onnx").symlink_to(outside)
        name = "link.onnx"
    _edit(bundle, lambda d: d["components"]["memory_encoder"].__setitem__("file", name))
    _error(bundle, "components.memory_encoder", repr(name), "outside the bundle directory")


def test_file_in_subfolder_allowed(bundle: Path) -> None:
    (bundle / "graphs").mkdir()
    os.replace(bundle / "memory_encoder.onnx", bundle / "graphs" / "memory_encoder.onnx")
    _edit(
        bundle,
        lambda d: d["components"]["memory_encoder"].__setitem__(
            "file", "graphs/memory_encoder.onnx"
        ),
    )
    assert load_bundle(bundle).file("memory_encoder").parent.name == "graphs"


def test_missing_manifest(bundle: Path) -> None:
    (bundle / MANIFEST_NAME).unlink()
    _error(bundle, str(bundle), "bundle.yaml is missing", "samurai-compile")


def test_not_a_directory(bundle: Path, tmp_path: Path) -> None:
    _error(bundle / "memory_encoder.onnx", "is not a directory")
    _error(bundle / MANIFEST_NAME, "pass the bundle directory", str(bundle))
    _error(tmp_path / "nope", "does not exist", "samurai-compile")


def test_invalid_yaml(bundle: Path) -> None:
    _write(bundle, "format_version: 1\ncomponents: [\n  : :\n")
    _error(bundle, "not valid YAML", "line")
    _write(bundle, "- 1\n- 2\n")
    _error(bundle, "mapping at the top level")


def test_missing_component(bundle: Path) -> None:
    _edit(bundle, lambda d: d["components"].pop("mask_decoder"))
    _error(bundle, "mask_decoder", "missing", "--components all")


def test_static_flag_on_another_graph(bundle: Path) -> None:
    _edit(bundle, lambda d: d["components"]["mask_decoder"].__setitem__("static", True))
    _error(bundle, "components.mask_decoder.static", "only memory_attention has a static variant")


def test_unknown_component(bundle: Path) -> None:
    _edit(
        bundle, lambda d: d["components"].__setitem__("refiner", copy.deepcopy(d["components"]["postprocess"]))
    )
    _error(bundle, "components", "unknown key(s) refiner")


def test_inputs_of_another_version(bundle: Path) -> None:
    def rename(d: dict[str, Any]) -> None:
        d["components"]["memory_encoder"]["inputs"][1]["name"] = "mask_logits"

    _edit(bundle, rename)
    _error(bundle, "components.memory_encoder", "the contract says", "rebuild")

    def retype(d: dict[str, Any]) -> None:
        d["components"]["memory_encoder"]["inputs"][1]["name"] = "masks"
        d["components"]["memory_encoder"]["inputs"][2]["dtype"] = "float32"

    _edit(bundle, retype)
    _error(bundle, "components.memory_encoder", "candidate is float32", "int64")


def test_swapped_graphs_with_consistent_hashes(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two graphs' files swapped, hashes swapped with them: bundle.yaml reads fine, but each ONNX
    file's real signature is checked against its contract when the graphs are loaded, before
    any graph's forms are timed (memory attention's take half a minute on a CPU)."""
    from samurai_onnx.runtime import graphs
    from samurai_onnx.runtime.tracker import Tracker

    def no_timing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("forms timed before every graph was checked")

    monkeypatch.setattr(graphs, "fastest_form", no_timing)

    def swap(d: dict[str, Any]) -> None:
        a, b = d["components"]["mask_decoder"], d["components"]["memory_encoder"]
        for key in ("file", "sha256"):
            a[key], b[key] = b[key], a[key]

    _edit(bundle, swap)
    loaded = load_bundle(bundle)
    with pytest.raises(BundleError) as info:
        Tracker(loaded, processing="host")
    message = str(info.value)
    assert "memory_encoder.onnx does not match its graph contract" in message, message
    assert "rebuild" in message and "\n" not in message


def test_edit_without_digest_refused(bundle: Path) -> None:
    """bundle.yaml covered by bundle.yaml.sha256: an edit (or corruption) is caught first."""
    path = bundle / MANIFEST_NAME
    path.write_text(path.read_text().replace("kf_score_weight: 0.25", "kf_score_weight: 0.26"))
    _error(bundle, "does not match its digest", DIGEST_NAME, "sha256sum")
    (bundle / DIGEST_NAME).unlink()
    _error(bundle, f"{DIGEST_NAME} is missing", "rebuild")
    (bundle / DIGEST_NAME).write_text("not a digest\n")
    _error(bundle, "expected a sha256")
    seal_manifest(bundle)
    assert load_bundle(bundle).tracker.kf_score_weight == 0.26


def test_malformed_component(bundle: Path) -> None:
    _edit(bundle, lambda d: d["components"]["memory_encoder"].pop("sha256"))
    _error(bundle, "components.memory_encoder", "needs 'file' and 'sha256'")


def test_bad_tracker_setting(bundle: Path) -> None:
    _edit(bundle, lambda d: d["tracker"].__setitem__("kf_score_weight", "0.25"))
    _error(bundle, "tracker.kf_score_weight", "expected float")
    _edit(bundle, lambda d: d["tracker"].__setitem__("kf_score_weight", 0.25))
    _edit(bundle, lambda d: d["tracker"].__setitem__("kalman", True))
    _error(bundle, "tracker", "unknown key(s) kalman")
