"""``samurai-eval run`` end to end on mini datasets made here (tiny random-weight bundle).

One LaSOT-layout dataset of three 2-frame sequences, one of which has a corrupt first frame:
a local Ray with 2 workers tracks the two good sequences on two different worker processes and
retries, then reports, the broken one (exit code 1, the others unharmed); once the frame is
repaired and one finished result truncated, a second run tracks only those two and leaves the
finished sequence's file untouched; every result equals ``samurai-run`` on that sequence alone.
A GOT-10k-layout run checks that layout. The bundle is the 256-pixel model (~0.3 s a frame); the
runs track 16 frames in all (the broken sequence fails before its first frame is tracked).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import synthetic_frames
from eval_helpers import make_got10k_sequence, make_lasot_sequence
from typer.testing import CliRunner

from samurai_onnx.compiler.evaluate import eval_cli
from samurai_onnx.compiler.evaluate.datasets import load_dataset
from samurai_onnx.compiler.evaluate.runner import SUMMARY_NAME, run_dataset
from samurai_onnx.runtime import cli as runtime_cli

pytestmark = pytest.mark.slow

W, H = 320, 240
S = W / 480
FRAMES = synthetic_frames(6, W, H)
# (name, first frame index into FRAMES); the white box moves by (8, 3) px a frame at 480 wide
SEQUENCES = [("box-1", 0), ("box-2", 2), ("box-3", 4)]
BROKEN = "box-3"


def truth(start: int, n: int = 2) -> list[tuple[float, ...]]:
    return [
        tuple(round(v * S, 2) for v in (100 + 8 * i, 120 + 3 * i, 90, 70))
        for i in range(start, start + n)
    ]


def first_frame(root: Path, name: str) -> Path:
    return root / "box" / name / "img" / "00000001.jpg"


@pytest.fixture(scope="module")
def lasot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("eval") / "lasot"
    for name, start in SEQUENCES:
        make_lasot_sequence(root, name, FRAMES[start : start + 2], truth(start))
    broken = first_frame(root, BROKEN)
    shutil.copy(broken, broken.with_suffix(".good"))
    broken.write_bytes(b"this is not a JPEG")
    return root


def eval_cli_run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(eval_cli.app, ["run", *args, "--no-progress"])
    return result.exit_code, result.stderr


@pytest.fixture(scope="module")
def ray_run(lasot_dir: Path, tiny256_bundle: Path) -> tuple[Path, int, str]:
    pytest.importorskip("ray", reason="Ray (eval / dev extra) is not installed")
    out = lasot_dir.parent / "results"
    code, err = eval_cli_run(
        str(lasot_dir), "--bundle", str(tiny256_bundle), "--out", str(out), "--workers", "2",
        "--threads", "1", "--retries", "1",
    )  # fmt: skip
    return out, code, err


def summary(out: Path) -> dict:
    return json.loads((out / SUMMARY_NAME).read_text())


def test_ray_two_workers_track_three_sequences_and_report_the_broken_one(
    ray_run: tuple[Path, int, str],
) -> None:
    out, code, err = ray_run
    assert code == 1, err
    assert f"failed: {BROKEN}: VideoError: cannot decode frame 0" in err
    run = summary(out)
    assert (run["backend"], run["workers"], run["threads"]) == ("ray", 2, 1)
    seqs = run["sequences"]
    assert {n: s["status"] for n, s in seqs.items()} == {
        "box-1": "tracked",
        "box-2": "tracked",
        "box-3": "failed",
    }
    assert seqs[BROKEN]["attempts"] == 2  # tried, retried once, then reported
    workers = {seqs[n]["worker"] for n in ("box-1", "box-2")}
    assert len(workers) == 2, "both actors should have tracked a sequence"
    assert all(int(w.rsplit(":", 1)[1]) != os.getpid() for w in workers)
    for name in ("box-1", "box-2"):
        assert len((out / f"{name}.txt").read_text().splitlines()) == 2
        assert len((out / f"{name}_time.txt").read_text().splitlines()) == 2
    assert not (out / f"{BROKEN}.txt").exists()


@pytest.fixture(scope="module")
def resumed(ray_run: tuple[Path, int, str], lasot_dir: Path, tiny256_bundle: Path) -> dict:
    out = ray_run[0]
    broken = first_frame(lasot_dir, BROKEN)
    shutil.copy(broken.with_suffix(".good"), broken)
    finished = out / "box-1.txt"
    before = {"mtime": finished.stat().st_mtime_ns, "text": finished.read_text()}
    partial = out / "box-2.txt"
    partial.write_text(partial.read_text().splitlines()[0] + "\n")  # as if cut off
    code, err = eval_cli_run(
        str(lasot_dir), "--bundle", str(tiny256_bundle), "--out", str(out), "--backend", "local"
    )
    return {"out": out, "code": code, "err": err, "before": before}


def test_resume_skips_finished_sequences_and_redoes_partial_and_failed_ones(
    resumed: dict,
) -> None:
    assert resumed["code"] == 0, resumed["err"]
    out = resumed["out"]
    finished = out / "box-1.txt"
    assert finished.stat().st_mtime_ns == resumed["before"]["mtime"]
    assert finished.read_text() == resumed["before"]["text"]
    statuses = {n: s["status"] for n, s in summary(out)["sequences"].items()}
    assert statuses == {"box-1": "skipped", "box-2": "tracked", "box-3": "tracked"}
    assert "box-2.txt: 1 boxes for 2 frames" in resumed["err"]  # the partial file was noticed
    for name, _ in SEQUENCES:
        assert len((out / f"{name}.txt").read_text().splitlines()) == 2
    assert not list(out.glob(".*.tmp"))


def test_results_equal_samurai_run_on_each_sequence_alone(
    resumed: dict, lasot_dir: Path, tiny256_bundle: Path, tmp_path: Path
) -> None:
    for name, start in SEQUENCES:
        boxes = tmp_path / f"{name}.txt"
        box = ",".join(f"{v:g}" for v in truth(start)[0])
        args = [str(tiny256_bundle), str(lasot_dir / "box" / name / "img"), "--bbox", box]
        result = CliRunner().invoke(runtime_cli.app, [*args, "--boxes-out", str(boxes)])
        assert result.exit_code == 0, result.stderr
        assert (resumed["out"] / f"{name}.txt").read_text() == boxes.read_text(), name


def test_got10k_layout_run_writes_the_toolkit_files(
    ray_run: tuple[Path, int, str], tiny256_bundle: Path, tmp_path: Path
) -> None:
    val = tmp_path / "val"
    make_got10k_sequence(val, "GOT-10k_Val_000001", FRAMES[0:2], truth(0), [8, 5])
    out = tmp_path / "results"
    run = run_dataset(load_dataset(val), tiny256_bundle, out, backend="local", progress=False)
    assert run.names("tracked") == ["GOT-10k_Val_000001"]
    seq_dir = out / "GOT-10k_Val_000001"
    assert sorted(p.name for p in seq_dir.iterdir()) == [
        "GOT-10k_Val_000001_001.txt",
        "GOT-10k_Val_000001_time.txt",
    ]
    # the same frames and box as box-1: the same boxes as the Ray worker wrote for it
    assert (seq_dir / "GOT-10k_Val_000001_001.txt").read_text() == (
        ray_run[0] / "box-1.txt"
    ).read_text()
