"""Fuzz suite, inputs: checkpoints, videos and frames, boxes.

Each case ends in exit code 2 with one ``error:`` line (or a one-line exception from the API)
and changes no file, or gives a valid result. Checkpoints go through ``samurai-compile`` (their
problems are found before anything is built); videos and boxes through ``samurai-run`` against a
placeholder bundle, which cannot create sessions: a video or box that is accepted then ends in
the bundle's one-line error, one that is not ends in its own. Decompression bombs are refused from
their headers, within a memory bound.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, synthetic_frames
from fuzz_support import COMPILE, RUN, assert_one_error, fake_bundle, run_bounded, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from samurai_onnx.compiler import cli as compile_cli
from samurai_onnx.compiler.checkpoint import CheckpointError, read_state_dict
from samurai_onnx.compiler.manifest import load_model_manifest
from samurai_onnx.runtime import cli as run_cli
from samurai_onnx.runtime.video import VideoError, open_frames

TINY = REPO / "manifests" / "tiny.yaml"
PATCH = "image_encoder.trunk.patch_embed.proj.weight"
W, H = 160, 120
FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def one_line(message: str) -> None:
    assert "\n" not in message and len(message) <= 1200, message[:2000]


# -- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state(tiny_checkpoint: Path) -> dict[str, torch.Tensor]:
    return dict(torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)["model"])


def _variant(state: dict[str, Any], case: str) -> Any:
    s = dict(state)
    if case == "patch_0d":
        s[PATCH] = torch.tensor(1.0)
    elif case == "patch_1d":
        s[PATCH] = torch.zeros(96)
    elif case == "nan_weights":
        key = "memory_encoder.fuser.layers.0.pwconv1.weight"
        s[key] = s[key].clone()
        s[key][0, 0] = float("nan")
    elif case == "inf_weights":
        key = "sam_mask_decoder.iou_prediction_head.layers.0.weight"
        s[key] = s[key].clone()
        s[key][1] = float("inf")
    elif case == "not_a_tensor":
        s["obj_ptr_proj.layers.0.bias"] = 3
    elif case == "int_key":
        s[7] = torch.zeros(1)
    elif case == "wrong_shape":
        key = "sam_mask_decoder.iou_prediction_head.layers.2.weight"  # [4, 256] -> [256, 4]
        s[key] = s[key].t().contiguous()
    elif case == "missing_key":
        del s["obj_ptr_proj.layers.0.bias"]
    elif case == "model_is_a_list":
        return {"model": [1, 2]}
    return {"model": s}


CHECKPOINT_CASES = {
    "patch_0d": f"{PATCH} has shape []",
    "patch_1d": f"{PATCH} has shape [96]",
    "nan_weights": "non-finite weights",
    "inf_weights": "non-finite weights",
    "not_a_tensor": "not a named tensor",
    "int_key": "not a named tensor",
    "wrong_shape": "does not match SAM 2.1 tiny",
    "missing_key": "does not match SAM 2.1 tiny",
    "model_is_a_list": "no 'model' state dict",
    "truncated": "truncated",
    "random_bytes": "not a readable torch checkpoint",
    "empty": "not a readable torch checkpoint",
}


@pytest.fixture(scope="module")
def bad_checkpoints(
    state: dict[str, torch.Tensor], tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad_ckpt")
    files = {}
    for case in CHECKPOINT_CASES:
        path = folder / f"{case}.pt"
        if case == "truncated":
            path.write_bytes(tiny_checkpoint.read_bytes()[: 40 << 20])
        elif case == "random_bytes":
            path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, np.uint8).tobytes())
        elif case == "empty":
            path.write_bytes(b"")
        else:
            torch.save(_variant(state, case), path)
        files[case] = path
    return files


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_bad_checkpoint(bad_checkpoints: dict[str, Path], case: str, tmp_path: Path) -> None:
    ckpt = bad_checkpoints[case]
    before = snapshot(ckpt, tmp_path)
    args = [TINY, "--checkpoint", ckpt, "--out", tmp_path / "b", "--components", "memory_encoder"]
    result = CliRunner().invoke(compile_cli.app, [str(a) for a in args])
    assert_one_error(result.exit_code, result.stderr, str(ckpt), CHECKPOINT_CASES[case])
    assert snapshot(ckpt, tmp_path) == before


@pytest.mark.parametrize("case", ["nan_weights", "patch_0d"])
def test_bad_checkpoint_in_a_process(
    bad_checkpoints: dict[str, Path], case: str, tmp_path: Path
) -> None:
    """Through the real entry point: one line (not "export failed"), no sha256 warning for a
    build that failed, a bounded memory."""
    ckpt = bad_checkpoints[case]
    result = run_bounded([*COMPILE, str(TINY), "--checkpoint", str(ckpt), "--out",
                          str(tmp_path / "b")], limit_mb=6144)  # fmt: skip
    assert_one_error(result.code, result.stderr, CHECKPOINT_CASES[case])
    assert "export" not in result.stderr and "sha256" not in result.stderr
    assert result.peak_rss_mb < 2500, result.peak_rss_mb
    assert not (tmp_path / "b").exists()


SMALL_TENSORS = st.builds(
    lambda shape, fill: torch.full(shape, fill),
    st.lists(st.integers(0, 3), max_size=4).map(tuple),
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)


@FUZZ
@given(
    entries=st.dictionaries(
        st.sampled_from([PATCH, "image_encoder.trunk.blocks.0.x", "x", "memory_encoder.y"]),
        SMALL_TENSORS | st.integers() | st.text(max_size=5),
        max_size=4,
    ),
    wrap=st.booleans(),
)
def test_fuzz_state_dicts(tmp_path: Path, entries: dict[str, Any], wrap: bool) -> None:
    path = tmp_path / "c.pt"
    torch.save({"model": entries} if wrap else entries, path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path, load_model_manifest(TINY))
    one_line(str(info.value))


@FUZZ
@given(data=st.binary(max_size=2000), zip_head=st.booleans())
def test_fuzz_checkpoint_bytes(tmp_path: Path, data: bytes, zip_head: bool) -> None:
    path = tmp_path / "c.pt"
    path.write_bytes((b"PK\x03\x04" if zip_head else b"") + data)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path, load_model_manifest(TINY))
    one_line(str(info.value))


# -- videos and frames ---------------------------------------------------------------------------


def write_mp4(path: Path, n: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (W, H))
    for frame in synthetic_frames(n, W, H):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_mp4(tmp_path_factory.mktemp("clip") / "c.mp4", 6).read_bytes()


@pytest.fixture(scope="module")
def placeholder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_bundle(tmp_path_factory.mktemp("fake") / "bundle")


def run(bundle: Path, video: Path | str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(run_cli.app, [str(bundle), str(video), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


@FUZZ
@given(cut=st.floats(0.0, 1.0), noise=st.booleans())
def test_fuzz_damaged_videos(
    tmp_path: Path, clip_bytes: bytes, placeholder: Path, cut: float, noise: bool
) -> None:
    data = bytearray(clip_bytes[: int(len(clip_bytes) * cut)])
    if noise and data:
        rng = np.random.default_rng(len(data))
        for i in rng.integers(0, len(data), 20):
            data[i] ^= 0xFF
    video = tmp_path / "v.mp4"
    video.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    code, err = run(placeholder, video, "--bbox", "10,10,20,20", "--jsonl", str(tmp_path / "o"))
    assert_one_error(code, err)
    assert snapshot(tmp_path) == before


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height (an RGB image) with almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [12000, 40000])  # 0.4 GB and 4.8 GB decoded
def test_decompression_bomb_frames(tmp_path: Path, placeholder: Path, side: int) -> None:
    """A huge PNG of a few KB as frame 0 or frame 1: refused from its header."""
    for position in (0, 1):
        folder = tmp_path / f"frames{position}"
        folder.mkdir()
        frames = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in synthetic_frames(2, W, H)]
        for i, f in enumerate(frames):
            cv2.imwrite(str(folder / f"{i:03d}.png"), f)
        (folder / f"{position:03d}.png").write_bytes(_png_header(side, side))
        with pytest.raises(VideoError) as info, open_frames(folder) as source:
            list(source)
        one_line(str(info.value))
        assert f"frame {position}" in str(info.value) and "megapixels" in str(info.value)
        if side == 12000:
            assert "12000x12000" in str(info.value)
    result = run_bounded(
        [*RUN, str(placeholder), str(tmp_path / "frames0"), "--bbox", "1,1,5,5",
         "--jsonl", str(tmp_path / "o.jsonl")],
        limit_mb=2048,
    )  # fmt: skip
    assert_one_error(result.code, result.stderr, "megapixels")
    assert result.peak_rss_mb < 600, result.peak_rss_mb


@FUZZ
@given(
    shape=st.lists(st.integers(0, 5), min_size=0, max_size=4).map(tuple),
    dtype=st.sampled_from([np.uint8, np.float32, np.int64, np.bool_, np.uint16]),
)
def test_fuzz_frame_arrays(shape: tuple[int, ...], dtype: Any) -> None:
    frames = [np.zeros(shape, dtype)]
    try:
        with open_frames(frames) as source:
            out = list(source)
    except VideoError as exc:
        one_line(str(exc))
    else:
        assert out[0].dtype == np.uint8 and out[0].ndim == 3 and out[0].shape[2] == 3


# -- boxes ---------------------------------------------------------------------------------------

NUMBER_TEXT = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "nan", "inf", "-0", "1e400", "0x10", "1_0", "½", "--1"]),
)


@FUZZ
@given(
    parts=st.lists(NUMBER_TEXT, min_size=0, max_size=6),
    extra=st.lists(st.text(alphabet="0123456789,.-e x", max_size=12), max_size=2),
)
def test_fuzz_boxes(tmp_path: Path, clip_bytes: bytes, placeholder: Path, parts: list[str],
                    extra: list[str]) -> None:  # fmt: skip
    video = tmp_path / "v.mp4"
    if not video.exists():
        video.write_bytes(clip_bytes)
    args: list[str] = []
    for box in [",".join(parts), *extra]:
        args += ["--bbox", box]
    before = snapshot(tmp_path)
    code, err = run(placeholder, video, *args, "--boxes-out", str(tmp_path / "b.txt"))
    line = assert_one_error(code, err)
    assert snapshot(tmp_path) == before
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    good = len(values) == 4 and all(np.isfinite(values)) and values[2] > 0 and values[3] > 0
    if not good:
        assert "ONNX Runtime" not in line, line  # refused as a box, before any session


def test_too_many_objects(tmp_path: Path, clip_bytes: bytes, placeholder: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(clip_bytes)
    before = snapshot(tmp_path)
    code, err = run(placeholder, video, *["--bbox", "1,1,5,5"] * 65, "--jsonl", "o.jsonl")
    assert_one_error(code, err, "at most 64 objects")
    assert snapshot(tmp_path) == before


@pytest.mark.slow
def test_damaged_video_tracks_what_decodes(tiny256_bundle: Path, tmp_path: Path) -> None:
    """A video cut short (an MJPEG AVI, readable without its index): the frames that decode are
    tracked, the outputs are valid."""
    full = tmp_path / "full.avi"
    writer = cv2.VideoWriter(str(full), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (W, H))
    for frame in synthetic_frames(6, W, H):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    video = tmp_path / "cut.avi"
    video.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.9)])
    with open_frames(video) as source:
        decodable = sum(1 for _ in source)
    assert 0 < decodable < 6
    out = tmp_path / "o.txt"
    code, err = run(tiny256_bundle, video, "--bbox", "25,30,23,18", "--boxes-out", str(out),
                    "--no-progress")  # fmt: skip
    assert code == 0, err
    lines = out.read_text().splitlines()
    assert len(lines) == decodable and all(len(line.split(",")) == 4 for line in lines)


def test_script_errors_one_line(tmp_path: Path, placeholder: Path) -> None:
    """The user guide's onnx_inference.py on a missing video: one line, exit 2."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "onnx_inference.py"), "--video_path",
         str(tmp_path / "nope.mp4"), "--bbox", "1,2,3,4", "--model_dir", str(placeholder)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert_one_error(proc.returncode, proc.stderr, "does not exist")
    assert not list(tmp_path.iterdir())
