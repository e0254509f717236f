"""``samurai-run`` and ``scripts/onnx_inference.py`` on small synthetic videos.

Bad input must give one ``error: ...`` line on stderr and exit code 2 (no traceback, no usage
dump); outputs written before a failure midway must stay valid files. Runs that track frames use
the tiny random-weight bundle at 256 pixels and as few frames as the check needs (~0.3 s a frame
on 2 cores).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from conftest import SHARED_VIDEOS, synthetic_frames
from typer.testing import CliRunner

from samurai_onnx.runtime import cli
from samurai_onnx.runtime.bundle import MANIFEST_NAME, seal_manifest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "onnx_inference.py"
W, H = 320, 240
S = W / 480
BOX_A = f"{100 * S:g},{120 * S:g},{90 * S:g},{70 * S:g}"  # the white rectangle
BOX_B = f"{300 * S:g},{220 * S:g},{60 * S:g},{60 * S:g}"  # the red disc


def scene(n: int, w: int = W, h: int = H) -> list[np.ndarray]:
    """The shared synthetic scene at this file's frame size."""
    return synthetic_frames(n, w, h)


def write_mp4(path: Path, n: int, w: int = W, h: int = H) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (w, h))
    assert writer.isOpened()
    for f in scene(n, w, h):
        writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def count_frames(path: Path) -> tuple[int, tuple[int, int]]:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"{path} does not open"
    n, size = 0, (0, 0)
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n, size = n + 1, (frame.shape[1], frame.shape[0])
    cap.release()
    return n, size


def read_boxes(path: Path) -> list[list[int]]:
    lines = path.read_text().splitlines()
    boxes = [[int(v) for v in line.split(",")] for line in lines]
    assert all(len(b) == 4 for b in boxes), lines
    return boxes


def run_cli(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command in a fresh interpreter (``python -m`` = the ``samurai-run`` entry)."""
    return subprocess.run(
        [sys.executable, "-m", "samurai_onnx.runtime.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
        env={**os.environ, "COLUMNS": "120"},
    )


def invoke(*args: str | Path) -> tuple[int, str, str]:
    """In-process (typer's CliRunner), for the many cases that fail before any tracking."""
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_one_line_error(code: int, stderr: str, *needles: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("clip") / "clip.mp4", 2)


# -- bad input: no tracking needed ------------------------------------------------------------


def test_help_texts() -> None:
    code, out, _ = invoke("--help")
    assert code == 0
    text = " ".join(out.split())
    for option in ("--bbox", "--device", "--output-video", "--boxes-out", "--masks-dir", "--jsonl",
                   "--threads", "--fill-hole-area", "--max-frames", "webcam", "folder"):  # fmt: skip
        assert option in text, option
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0
    for option in ("--video_path", "--bbox", "--model_dir", "--device", "--output_video",
                   "_boxes.txt", "x,y,w,h"):  # fmt: skip
        assert option in proc.stdout, option


@pytest.mark.parametrize(
    ("bbox", "needles"),
    [
        (["--bbox", "1,2,3"], ("'1,2,3'", "x,y,w,h")),
        (["--bbox", "a,b,c,d"], ("x,y,w,h",)),
        (["--bbox", "10,10,0,20"], ("zero or negative area",)),
        (["--bbox", "10,10,20,-5"], ("zero or negative area",)),
        (["--bbox", "400,10,20,20"], ("outside", "320x240")),
        (["--bbox", "-50,-50,20,20"], ("outside",)),
        (["--bbox", BOX_A, "--bbox", "1,2"], ("'1,2'",)),
        ([], ("--bbox",)),
    ],
)
def test_bad_boxes(tiny256_bundle: Path, clip: Path, bbox: list[str], needles: tuple[str]) -> None:
    code, _, err = invoke(tiny256_bundle, clip, *bbox, "--jsonl", clip.with_suffix(".jsonl"))
    assert_one_line_error(code, err, *needles)
    assert not clip.with_suffix(".jsonl").exists()


def test_bad_videos(tiny256_bundle: Path, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, np.uint8).tobytes())
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    no_frames = tmp_path / "no_frames.mp4"
    cv2.VideoWriter(str(no_frames), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (W, H)).release()
    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    cases = [
        (garbage, ("cannot open", "garbage.mp4")),
        (empty, ("cannot open", "empty.mp4")),
        (no_frames, ("no_frames.mp4",)),
        (empty_dir, ("no .jpg/.jpeg/.png frames",)),
        (tmp_path / "missing.mp4", ("does not exist",)),
        (text, ("not a supported video",)),
    ]
    out = tmp_path / "boxes.txt"
    for video, needles in cases:
        code, _, err = invoke(tiny256_bundle, video, "--bbox", "1,2,3,4", "--boxes-out", out)
        assert_one_line_error(code, err, *needles)
        assert not out.exists()


def _bundle_copy(src: Path, dst: Path) -> Path:
    """A copy of the bundle with hard links to the graphs (copies where links are refused)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file():
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copy2(f, dst / f.name)
    return dst


def test_bad_bundles(tiny256_bundle: Path, clip: Path, tmp_path: Path) -> None:
    manifest = yaml.safe_load((tiny256_bundle / MANIFEST_NAME).read_text())

    def variant(name: str, edit: dict[str, object] | None = None, text: str | None = None) -> Path:
        root = _bundle_copy(tiny256_bundle, tmp_path / name)
        (root / MANIFEST_NAME).unlink()  # never write through a hard link
        (root / f"{MANIFEST_NAME}.sha256").unlink()
        data = {**manifest, **(edit or {})}
        (root / MANIFEST_NAME).write_text(text if text is not None else yaml.safe_dump(data))
        seal_manifest(root)
        return root

    comps = manifest["components"]
    bad_hash = {
        k: {**v, "sha256": "0" * 64} if k == "mask_decoder" else v for k, v in comps.items()
    }
    missing_file = variant("missing_file")
    (missing_file / comps["memory_encoder"]["file"]).unlink()
    no_manifest = _bundle_copy(tiny256_bundle, tmp_path / "no_manifest")
    (no_manifest / MANIFEST_NAME).unlink()
    cases = [
        (tmp_path / "nowhere", ("does not exist", "samurai-compile")),
        (no_manifest, ("bundle.yaml is missing",)),
        (variant("bad_yaml", text="components: [unclosed\n  - {"), ("not valid YAML",)),
        (variant("hash", {"components": bad_hash}), ("sha256", "mask_decoder")),
        (variant("version", {"format_version": 99}), ("format version 99", "rebuild")),
        (missing_file, ("memory_encoder", "missing")),
    ]
    for bundle, needles in cases:
        code, _, err = invoke(bundle, clip, "--bbox", BOX_A, "--jsonl", tmp_path / "o.jsonl")
        assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize(
    ("option", "needles"),
    [
        (["--device", "tpu"], ("unknown device 'tpu'", "cpu, cuda, tensorrt")),
        (["--threads", "0"], ("--threads",)),
        (["--max-frames", "0"], ("--max-frames",)),
        (["--fill-hole-area", "-1"], ("--fill-hole-area",)),
        (["--forms", "densest"], ("--forms 'densest'", "fastest, main, dense, unfused, gemm, layernorm, int8attn")),
    ],
)
def test_bad_options(tiny256_bundle: Path, clip: Path, option: list[str], needles: tuple[str]) -> None:
    code, _, err = invoke(tiny256_bundle, clip, "--bbox", BOX_A, "--jsonl", "o.jsonl", *option)
    assert_one_line_error(code, err, *needles)


def test_errors_are_one_line_in_a_real_process(tiny256_bundle: Path, tmp_path: Path) -> None:
    """Through the real entry point: no traceback, no FFmpeg chatter next to the error."""
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    proc = run_cli(tiny256_bundle, empty, "--bbox", "1,2,3,4", cwd=tmp_path)
    assert_one_line_error(proc.returncode, proc.stderr, "cannot open")
    assert not (tmp_path / "empty_boxes.txt").exists()  # the default output is not created
    proc = run_cli(tiny256_bundle, tmp_path / "x.mp4", "--bbox", "1,2,3", "--jsonl", "o.jsonl")
    assert_one_line_error(proc.returncode, proc.stderr, "x,y,w,h")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--video_path", str(empty), "--bbox", "1,2,3,4",
         "--model_dir", str(tiny256_bundle)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stderr, "cannot open")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--video_path", str(empty), "--bbox", "1,2,3,4"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stderr, "--model_dir")


# -- runs that track frames -------------------------------------------------------------------


@pytest.mark.slow
def test_two_objects_all_outputs(tiny256_bundle: Path, tmp_path: Path) -> None:
    n = 6
    video = write_mp4(tmp_path / "clip.mp4", n)
    out = tmp_path / "out"
    proc = run_cli(
        tiny256_bundle, video, "--bbox", BOX_A, "--bbox", BOX_B, "--device", "cpu",
        "--output-video", out / "annotated.mp4", "--boxes-out", out / "boxes.txt",
        "--masks-dir", out / "masks", "--jsonl", out / "track.jsonl", "--threads", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert f"tracked {n} frame(s) x 2 object(s)" in proc.stdout
    assert "fps" in proc.stderr  # the progress bar

    boxes = [read_boxes(out / f"boxes_obj{k}.txt") for k in (0, 1)]
    assert not (out / "boxes.txt").exists()
    assert [len(b) for b in boxes] == [n, n]
    for b in boxes:
        for x, y, w, h in b:
            assert 0 <= x <= x + w < W and 0 <= y <= y + h < H
    rows = [json.loads(line) for line in (out / "track.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(n))
    for i, r in enumerate(rows):
        assert [o["id"] for o in r["objects"]] == [0, 1]
        for k, o in enumerate(r["objects"]):
            assert set(o) == {"id", "box", "score", "present", "prompted"}
            assert (o["box"] if o["present"] else [0, 0, 0, 0]) == boxes[k][i]
    for k in (0, 1):
        pngs = sorted((out / "masks" / f"obj{k}").iterdir())
        assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(n)]
        for i, p in enumerate(pngs):
            mask = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
            assert mask.shape == (H, W) and mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255}
            assert rows[i]["objects"][k]["present"] == bool(mask.any())
    assert count_frames(out / "annotated.mp4") == (n, (W, H))
    assert not list(out.glob("*.partial*"))
    # --prefetch (the next frame encoded in a second thread) writes the same results
    ahead = tmp_path / "ahead"
    proc = run_cli(
        tiny256_bundle, video, "--bbox", BOX_A, "--bbox", BOX_B, "--prefetch",
        "--masks-dir", ahead / "masks", "--jsonl", ahead / "track.jsonl", "--threads", "2",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert (ahead / "track.jsonl").read_text() == (out / "track.jsonl").read_text()
    for k in (0, 1):
        for i in range(n):
            name = f"obj{k}/{i:06d}.png"
            a = cv2.imread(str(ahead / "masks" / name), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(a, cv2.imread(str(out / "masks" / name), cv2.IMREAD_UNCHANGED))


@pytest.mark.slow
def test_failure_midway_keeps_valid_outputs(tiny256_bundle: Path, tmp_path: Path) -> None:
    """Frame 2 of a PNG folder has another size: frames 0-1 stay in every output."""
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = scene(2) + scene(1, 160, 120)
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:03d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    proc = run_cli(
        tiny256_bundle, folder, "--bbox", BOX_A, "--output-video", out / "a.mp4",
        "--boxes-out", out / "b.txt", "--jsonl", out / "t.jsonl", "--masks-dir", out / "m",
        "--no-progress",
    )  # fmt: skip
    assert_one_line_error(proc.returncode, proc.stderr, "frame 2", "160x120", "320x240")
    assert "2 frame(s) tracked before it" in proc.stderr
    assert len(read_boxes(out / "b.txt")) == 2
    assert len((out / "t.jsonl").read_text().splitlines()) == 2
    assert len(list((out / "m" / "obj0").glob("*.png"))) == 2
    assert count_frames(out / "a.mp4") == (2, (W, H))
    assert not list(out.glob("*.partial*"))


@pytest.mark.slow
def test_interrupt_midway_keeps_valid_outputs(
    tiny256_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C while frame 1 is read (a frame iterator): exit 130, frame 0 written and valid."""

    def frames() -> Iterator[np.ndarray]:
        yield scene(1)[0]
        raise KeyboardInterrupt

    out = tmp_path / "out"
    code = cli.execute(
        tiny256_bundle, frames(), [BOX_A], output_video=out / "a.mp4", boxes_out=out / "b.txt",
        progress=False,
    )  # fmt: skip
    assert code == 130
    assert "interrupted" in capsys.readouterr().err
    assert len(read_boxes(out / "b.txt")) == 1
    assert count_frames(out / "a.mp4") == (1, (W, H))


@pytest.mark.slow
def test_cuda_without_cuda_falls_back_with_a_warning(tiny256_bundle: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("CUDA is available here; the fallback is for machines without it")
    write_mp4(tmp_path / "one.mp4", 1)
    proc = run_cli(tiny256_bundle, "one.mp4", "--bbox", BOX_A, "--device", "cuda", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "CUDAExecutionProvider" in line]
    assert len(warnings) == 1, proc.stderr  # once, not once per graph
    assert warnings[0].startswith("WARNING") and "CPUExecutionProvider" in warnings[0]
    # no output option: boxes go to <video stem>_boxes.txt in the working folder
    assert "one_boxes.txt" in proc.stderr
    assert len(read_boxes(tmp_path / "one_boxes.txt")) == 1


@pytest.mark.slow
def test_onnx_inference_script(tiny256_bundle: Path, tmp_path: Path) -> None:
    """The user guide's command line, output video and the default box file."""
    video = write_mp4(tmp_path / "walk.mp4", 2)
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--video_path", str(video), "--bbox", BOX_A,
         "--model_dir", str(tiny256_bundle), "--device", "cpu",
         "--output_video", str(tmp_path / "walk_out.mp4")],
        capture_output=True, text=True, cwd=tmp_path, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert count_frames(tmp_path / "walk_out.mp4") == (2, (W, H))
    assert len(read_boxes(tmp_path / "walk_boxes.txt")) == 2
    assert "walk_boxes.txt" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_VIDEOS / "cups.mp4").is_file(), reason="../shared/videos is absent")
def test_cups_two_boxes_all_outputs(tiny256_bundle: Path, tmp_path: Path) -> None:
    """The shared clip with its two documented boxes (red cup, yellow ball): all four outputs."""
    n = 3
    out = tmp_path / "cups"
    proc = run_cli(
        tiny256_bundle, SHARED_VIDEOS / "cups.mp4",
        "--bbox", "574,294,162,246", "--bbox", "364,424,74,76", "--max-frames", str(n),
        "--output-video", out / "cups.mp4", "--boxes-out", out / "boxes.txt",
        "--masks-dir", out / "masks", "--jsonl", out / "cups.jsonl",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert [len(read_boxes(out / f"boxes_obj{k}.txt")) for k in (0, 1)] == [n, n]
    assert len((out / "cups.jsonl").read_text().splitlines()) == n
    assert all(len(list((out / "masks" / f"obj{k}").iterdir())) == n for k in (0, 1))
    assert count_frames(out / "cups.mp4") == (n, (1280, 720))
