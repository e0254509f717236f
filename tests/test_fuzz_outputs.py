"""Fuzz suite, outputs and signals: no run may destroy a user's file or leave a broken output.

Refused runs (an output that is an input or another output, a folder where a file is expected)
exit 2 with one ``error:`` line before anything is read, and change no file: checked in-process
against a placeholder bundle, table-driven and with hypothesis over output assignments. Runs
that fail before frame 0 leave existing outputs as they were; successful runs replace them.
Signals: SIGTERM and SIGINT mid-run finish the frame, close every output (valid MP4, whole
lines) and exit 143 / 130; before frame 0 they change nothing; samurai-compile interrupted
leaves no folder. Runs that track use the 256-pixel tiny bundle (~0.3 s a frame).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import cv2
import pytest
from conftest import synthetic_frames
from fuzz_support import COMPILE, RUN, assert_one_error, fake_bundle, run_bounded, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from samurai_onnx.runtime import cli

W, H = 160, 120
BOX = "25,30,23,18"  # the white rectangle of the synthetic scene at 160 px
BOX_B = "100,73,20,20"


def write_mp4(path: Path, n: int) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"mp4v"), 10.0, (W, H))
    assert writer.isOpened()
    for frame in synthetic_frames(n, W, H):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli.app, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stderr


def hidden(folder: Path) -> list[Path]:
    """Temporary files (``.<name>.*.partial*``, ``.*.building-*``) left behind under ``folder``."""
    return [p for p in folder.rglob(".*") if "partial" in p.name or "building" in p.name]


@pytest.fixture()
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """tmp_path as the working folder, with in.mp4 (4 frames), a frame folder, a folder, a
    file and the placeholder bundle."""
    monkeypatch.chdir(tmp_path)
    write_mp4(tmp_path / "in.mp4", 4)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, f in enumerate(synthetic_frames(3, W, H)):
        cv2.imwrite(str(frames / f"{i:06d}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    (tmp_path / "existing_dir").mkdir()
    (tmp_path / "notes.txt").write_text("keep me\n")
    fake_bundle(tmp_path / "bundle")
    return tmp_path


REFUSED = {
    "video_over_input": (["--output-video", "in.mp4"], "the input video"),
    "boxes_over_input": (["--boxes-out", "in.mp4"], "the input video"),
    "jsonl_over_input": (["--jsonl", "in.mp4"], "the input video"),
    "boxes_and_jsonl_same": (["--boxes-out", "s.txt", "--jsonl", "s.txt"], "also the file of"),
    "same_via_dotdot": (["--boxes-out", "x/../s.txt", "--jsonl", "s.txt"], "also the file of"),
    "per_object_box_file": (
        ["--bbox", BOX_B, "--boxes-out", "b.txt", "--jsonl", "b_obj1.txt"],
        "also the file of",
    ),
    "symlink_to_input": (["--output-video", "link.mp4"], "the input video"),
    "hard_link_to_input": (["--jsonl", "hard.mp4"], "the input video"),
    "video_is_a_folder": (["--output-video", "existing_dir"], "existing folder"),
    "boxes_is_a_folder": (["--boxes-out", "existing_dir"], "existing folder"),
    "masks_dir_is_a_file": (["--masks-dir", "notes.txt"], "is a file"),
    "masks_dir_holds_input": (["--masks-dir", "."], "holds the input video"),
    "output_in_bundle": (["--jsonl", "bundle/bundle.yaml"], "inside the bundle"),
    "masks_dir_over_bundle": (["--masks-dir", "bundle"], "overlaps the bundle"),
    "output_in_mask_folder": (
        ["--masks-dir", "m", "--jsonl", "m/obj0/000000.png"],
        "inside the mask folder",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_outputs_change_nothing(scene: Path, case: str) -> None:
    (scene / "link.mp4").symlink_to(scene / "in.mp4")
    os.link(scene / "in.mp4", scene / "hard.mp4")
    (scene / "s.txt").write_text("an older result\n")
    args, needle = REFUSED[case]
    before = snapshot(scene)
    code, err = invoke(scene / "bundle", "in.mp4", "--bbox", BOX, *args)
    assert_one_error(code, err, needle)
    assert snapshot(scene) == before


def test_output_over_a_frame_of_the_input_folder(scene: Path) -> None:
    before = snapshot(scene)
    code, err = invoke(scene / "bundle", "frames", "--bbox", BOX, "--jsonl", "frames/000001.png")
    assert_one_error(code, err, "input frame folder")
    assert snapshot(scene) == before


POOL = ["in.mp4", "s.txt", "t.txt", "b_obj1.txt", "existing_dir", "sub/s.txt", "link.mp4"]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    boxes=st.one_of(st.none(), st.sampled_from(["b.txt", *POOL])),
    jsonl=st.one_of(st.none(), st.sampled_from(POOL)),
    video=st.one_of(st.none(), st.sampled_from([*POOL, "v.mp4"])),
    objects=st.integers(1, 2),
)
def test_fuzz_output_assignments(
    scene: Path, boxes: str | None, jsonl: str | None, video: str | None, objects: int
) -> None:
    """Any assignment of names to outputs: one error line and no file changed (the placeholder
    bundle cannot track, so even an accepted assignment ends in a one-line error); a collision
    is always refused up front, never reaches the bundle."""
    if not (scene / "link.mp4").exists():
        (scene / "link.mp4").symlink_to(scene / "in.mp4")
    args = ["--bbox", BOX] * 1 + (["--bbox", BOX_B] if objects == 2 else [])
    for option, value in (("--boxes-out", boxes), ("--jsonl", jsonl), ("--output-video", video)):
        if value:
            args += [option, value]
    before = snapshot(scene)
    code, err = invoke(scene / "bundle", "in.mp4", *args)
    line = assert_one_error(code, err)
    assert snapshot(scene) == before
    files: list[Path] = []
    if boxes:
        b = Path(boxes)
        files += (
            [b] if objects == 1 else [b.with_name(f"{b.stem}_obj{k}{b.suffix}") for k in (0, 1)]
        )
    files += [Path(p) for p in (jsonl, video) if p]
    resolved = [(scene / f).resolve() for f in files]
    clash = len(set(resolved)) < len(resolved) or (scene / "in.mp4").resolve() in resolved
    if clash or any((scene / f).is_dir() for f in files):
        assert "ONNX Runtime" not in line, line  # refused before the bundle was touched


def test_failure_before_frame0_keeps_existing_outputs(scene: Path) -> None:
    """A box outside the frame (found after the bundle and video are read): nothing changed."""
    for name in ("o.txt", "o.jsonl"):
        (scene / name).write_text("an older result\n")
    before = snapshot(scene)
    code, err = invoke(
        scene / "bundle", "in.mp4", "--bbox", "500,500,10,10", "--boxes-out", "o.txt",
        "--jsonl", "o.jsonl", "--output-video", "new/o.mp4",
    )  # fmt: skip
    assert_one_error(code, err, "outside")
    assert snapshot(scene) == before


@pytest.mark.slow
def test_outputs_opened_before_tracking(tiny256_bundle: Path, scene: Path) -> None:
    """The video output cannot be opened (its folder is a file): found before frame 0 is tracked,
    and the existing box file is not truncated (it used to be)."""
    (scene / "o.txt").write_text("an older result\n")
    before = snapshot(scene)
    code, err = invoke(
        tiny256_bundle, "in.mp4", "--bbox", BOX, "--boxes-out", "o.txt",
        "--output-video", "notes.txt/o.mp4", "--no-progress",
    )  # fmt: skip
    assert_one_error(code, err, "cannot create folder")
    assert snapshot(scene) == before


@pytest.mark.slow
def test_successful_run_replaces_outputs(tiny256_bundle: Path, scene: Path) -> None:
    for name in ("o.txt", "o.jsonl", "o.mp4"):
        (scene / name).write_text("an older result\n")
    code, err = invoke(
        tiny256_bundle, "in.mp4", "--bbox", BOX, "--boxes-out", "o.txt", "--jsonl", "o.jsonl",
        "--output-video", "o.mp4", "--masks-dir", "m", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert len((scene / "o.txt").read_text().splitlines()) == 4
    rows = [json.loads(line) for line in (scene / "o.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == [0, 1, 2, 3]
    assert count_frames(scene / "o.mp4") == 4
    assert len(list((scene / "m" / "obj0").glob("*.png"))) == 4
    assert not hidden(scene)


# -- signals -------------------------------------------------------------------------------------


def _caught(pid: int, signum: int) -> bool:
    """Has process ``pid`` installed a handler for ``signum`` (``SigCgt`` in /proc)?"""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(
        int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt")
    )
    return bool(mask >> (signum - 1) & 1)


def _peak_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM")) / 1024


def _wait(condition: object, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _start_run(bundle: Path, scene: Path, *extra: str) -> subprocess.Popen[str]:
    write_mp4(scene / "long.mp4", 60)
    return subprocess.Popen(
        [*RUN, str(bundle), "long.mp4", "--bbox", BOX, "--boxes-out", "o.txt",
         "--jsonl", "o.jsonl", "--output-video", "o.mp4", "--masks-dir", "m", "--no-progress",
         *extra],
        cwd=scene, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _jsonl_lines(scene: Path) -> int:
    temps = list(scene.glob(".o.jsonl.*"))
    return len(temps[0].read_text().splitlines()) if temps else 0


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_mid_run(tiny256_bundle: Path, scene: Path, signum: int, code: int) -> None:
    proc = _start_run(tiny256_bundle, scene)
    _wait(lambda: _jsonl_lines(scene) >= 2, proc)
    assert _peak_mb(proc.pid) < 1500
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("interrupted; the outputs hold the "), err
    n = int(lines[0].split("hold the ")[1].split()[0])
    assert 2 <= n < 60
    assert len((scene / "o.txt").read_text().splitlines()) == n
    rows = [json.loads(line) for line in (scene / "o.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(n))
    assert count_frames(scene / "o.mp4") == n  # finalised, playable
    assert len(list((scene / "m" / "obj0").glob("*.png"))) == n
    assert not hidden(scene)


@pytest.mark.slow
def test_sigterm_before_first_frame(tiny256_bundle: Path, scene: Path) -> None:
    (scene / "o.txt").write_text("an older result\n")
    before = snapshot(scene)
    proc = _start_run(tiny256_bundle, scene)
    _wait(lambda: _caught(proc.pid, signal.SIGTERM), proc)
    proc.send_signal(signal.SIGTERM)  # while the bundle is verified and sessions are created
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip() == "interrupted before the first frame was tracked; no file was changed"
    after = snapshot(scene)
    assert {k: v for k, v in after.items() if not k.endswith("long.mp4")} == before


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_compile_interrupted_leaves_nothing(
    tiny_checkpoint: Path, tmp_path: Path, signum: int, code: int
) -> None:
    from conftest import _small_manifest

    manifest = _small_manifest(tmp_path / "m" / "tiny-256.yaml", 256)
    out = tmp_path / "new" / "bundle"
    proc = subprocess.Popen(
        [*COMPILE, str(manifest), "--checkpoint", str(tiny_checkpoint), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    _wait(lambda: (tmp_path / "new").is_dir() and any((tmp_path / "new").iterdir()), proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1] == "interrupted; nothing was written", err
    assert "Traceback" not in err
    assert not (tmp_path / "new").exists()  # neither the bundle nor the folder made for it


@pytest.mark.slow
def test_compile_components_into_existing_bundle(
    tiny_checkpoint: Path, tiny256_bundle: Path, tmp_path: Path
) -> None:
    """--components into an existing bundle keeps the other graphs (says so) and it still
    loads; a bundle of another target is refused and left as it was."""
    import shutil

    from conftest import _small_manifest

    from samurai_onnx.runtime.bundle import COMPONENTS, load_bundle

    manifest = _small_manifest(tmp_path / "tiny-256.yaml", 256)
    out = tmp_path / "b"
    shutil.copytree(tiny256_bundle, out)
    before = snapshot(out)
    common = [str(manifest), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    result = run_bounded([*COMPILE, *common, "--components", "memory_encoder"], limit_mb=6144)
    assert result.code == 0, result.stderr
    kept = [c for c in COMPONENTS if c != "memory_encoder"]
    assert f"kept {', '.join(kept)} from the existing bundle" in result.stdout
    assert set(load_bundle(out).components) == set(COMPONENTS)
    assert snapshot(out) == before  # a deterministic rebuild of the same graph
    result = run_bounded(
        [*COMPILE, *common, "--components", "memory_encoder", "--target", "cpu-int8"],
        limit_mb=6144,
    )
    assert_one_error(result.code, result.stderr, "another model, target", "target.name")
    assert snapshot(out) == before
    assert not hidden(tmp_path)


def test_nothing_partial_left_by_a_refused_compile(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep")
    before = snapshot(tmp_path)
    result = subprocess.run(
        [*COMPILE, "tiny", "--out", str(tmp_path / "notes"), "--no-download"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert_one_error(result.returncode, result.stderr, "not a bundle", "todo.txt")
    assert snapshot(tmp_path) == before


def test_compile_stops_when_a_library_swallows_the_interrupt(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl-C that lands in Python code called from C++ which catches every error (onnxsim's
    constant folding) is lost as an exception; the compile must still stop at the next pass.
    Seen: a SIGINT during a simplify pass, and the bundle was written with exit code 0."""
    from conftest import _small_manifest
    from typer.testing import CliRunner

    import samurai_onnx.compiler.build as build
    from samurai_onnx.compiler.cli import app

    real = build.simplify_graph

    def swallowing(src: Path, out: Path) -> Path:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)  # the handler runs here and raises
        except BaseException:  # what the library does with its callbacks' errors
            pass
        return real(src, out)

    monkeypatch.setattr(build, "simplify_graph", swallowing)
    manifest = _small_manifest(tmp_path / "m" / "tiny-256.yaml", 256)
    out = tmp_path / "new" / "bundle"
    args = [str(manifest), "--checkpoint", str(tiny_checkpoint), "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 130, result.output
    assert "interrupted; nothing was written" in result.output
    assert "image_encoder     simplify" not in result.output  # stopped before reporting it
    assert not (tmp_path / "new").exists()
