"""samurai-eval's dataset readers, result files and command-line errors (no tracking here).

Datasets and result files are untrusted: each malformed input must give one line naming the
file (and line), never a traceback; results are written atomically and a partial one is
detected.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import (
    blank_frames,
    make_got10k_sequence,
    make_lasot_sequence,
    make_otb_sequence,
)
from typer.testing import CliRunner

from samurai_onnx.compiler.evaluate import eval_cli
from samurai_onnx.compiler.evaluate.datasets import DatasetError, detect_format, load_dataset
from samurai_onnx.compiler.evaluate.results import (
    format_boxes,
    is_complete,
    read_result,
    replace_from,
    result_paths,
    write_atomic,
    write_result,
)
from samurai_onnx.compiler.evaluate.runner import RunError, plan, run_dataset, size_pool

GT3 = [(2, 3, 6, 5), (3, 3, 6, 5), (4, 4, 6, 5)]


def lasot(tmp_path: Path, nested: bool = True) -> Path:
    root = tmp_path / "lasot"
    make_lasot_sequence(root, "bird-2", blank_frames(3), GT3, [0, 1, 0], nested)
    make_lasot_sequence(root, "bird-10", blank_frames(2), GT3[:2], None, nested)
    return root


@pytest.mark.parametrize("nested", [True, False])
def test_lasot_layouts_read_ground_truth_and_visibility(tmp_path: Path, nested: bool) -> None:
    root = lasot(tmp_path, nested)
    data = load_dataset(root)
    assert data.format == "lasot" and [s.name for s in data.sequences] == ["bird-10", "bird-2"]
    seq = data.select(["bird-2"]).sequences[0]
    assert seq.num_frames == 3 and seq.first_box == (2.0, 3.0, 6.0, 5.0)
    assert seq.visible is not None and seq.visible.tolist() == [True, False, True]
    (root / "testing_set.txt").write_text("bird-2\n")
    assert [s.name for s in load_dataset(root).sequences] == ["bird-2"]


def test_got10k_reads_cover_labels_resolution_and_the_test_split(tmp_path: Path) -> None:
    val = tmp_path / "val"
    make_got10k_sequence(val, "GOT-10k_Val_000001", blank_frames(3), GT3, [8, 0, 3], (640, 480))
    make_got10k_sequence(val, "GOT-10k_Val_000002", blank_frames(2), GT3[:1])  # test-split style
    data = load_dataset(val, "auto")
    assert data.format == "got10k"
    first, second = data.sequences
    assert first.visible is not None and first.visible.tolist() == [True, False, True]
    assert first.image_size == (640, 480) and first.scorable
    assert second.num_frames == 2 and not second.scorable and second.visible is None
    with pytest.raises(DatasetError, match="point to a subset folder"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("sep", [",", "\t", " "])
def test_otb_accepts_its_separators(tmp_path: Path, sep: str) -> None:
    make_otb_sequence(tmp_path / "otb", "Basketball", blank_frames(3), GT3, sep)
    data = load_dataset(tmp_path / "otb")
    assert data.format == "otb"
    np.testing.assert_array_equal(data.sequences[0].groundtruth, np.asarray(GT3, float))


def test_unknown_layout_and_unknown_sequence_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a LaSOT, GOT-10k or OTB dataset"):
        detect_format(tmp_path / "empty")
    with pytest.raises(DatasetError, match="nope"):
        load_dataset(lasot(tmp_path), sequences=["nope"])


BAD_GROUND_TRUTH = [
    ("2,3,6,5\n3,3,six,5\n4,4,6,5\n", r"groundtruth.txt:2: expected a box"),
    ("2,3,6,5\n3,3,6\n4,4,6,5\n", r"groundtruth.txt:2: expected a box"),
    ("2,3,6,5\nnan,3,6,5\n4,4,6,5\n", r"groundtruth.txt:2: expected a box"),
    ("2,3,6,5\n\n4,4,6,5\n", r"groundtruth.txt:2: empty line"),
    ("2,3,6,5\n3,3,6,5\n", r"groundtruth.txt: 2 boxes for 3 frames"),
    ("2,3,0,5\n3,3,6,5\n4,4,6,5\n", r"groundtruth.txt:1: the first-frame box"),
]


@pytest.mark.parametrize(("text", "message"), BAD_GROUND_TRUTH)
def test_malformed_ground_truth_names_the_file_and_line(
    tmp_path: Path, text: str, message: str
) -> None:
    root = lasot(tmp_path)
    (root / "bird" / "bird-2" / "groundtruth.txt").write_text(text)
    with pytest.raises(DatasetError, match=message) as err:
        load_dataset(root)
    assert "bird-2" in str(err.value) and "\n" not in str(err.value)


def test_missing_or_unreadable_files_are_named(tmp_path: Path) -> None:
    root = lasot(tmp_path)
    seq = root / "bird" / "bird-2"
    (seq / "groundtruth.txt").unlink()
    with pytest.raises(DatasetError, match=r"bird-2/groundtruth.txt: ground truth is missing"):
        load_dataset(root)
    (seq / "groundtruth.txt").write_bytes(b"2,3,6,5\n\xff\xfe\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        load_dataset(root)
    with open(seq / "groundtruth.txt", "wb") as f:
        f.truncate(40 * 2**20)  # a sparse 40 MiB file
    with pytest.raises(DatasetError, match="refusing more than 32 MiB"):
        load_dataset(root)
    (seq / "groundtruth.txt").write_text("".join(f"{b[0]},{b[1]},{b[2]},{b[3]}\n" for b in GT3))
    (seq / "out_of_view.txt").write_text("0,0\n")
    with pytest.raises(DatasetError, match=r"out_of_view.txt: out-of-view labels has 2 labels"):
        load_dataset(root)


def test_got10k_list_cannot_escape_the_dataset(tmp_path: Path) -> None:
    val = tmp_path / "val"
    make_got10k_sequence(val, "a", blank_frames(3), GT3)
    (val / "list.txt").write_text("a\n../../etc\n")
    with pytest.raises(DatasetError, match=r"list.txt:2: '../../etc' is not a sequence"):
        load_dataset(val)


def test_result_files_are_atomic_and_partial_ones_are_detected(tmp_path: Path) -> None:
    boxes = [(1, 2, 3, 4), (5, 6, 7, 8), (0, 0, 0, 0)]
    path = write_result("got10k", tmp_path, "seq", boxes, [0.5, 0.25, 0.25])
    assert path == tmp_path / "seq" / "seq_001.txt"
    assert result_paths("lasot", tmp_path, "seq") == (
        tmp_path / "seq.txt",
        tmp_path / "seq_time.txt",
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["seq_001.txt", "seq_time.txt"]
    assert path.read_text() == "1,2,3,4\n5,6,7,8\n0,0,0,0\n"
    assert is_complete(path, 3) and not is_complete(path, 4)
    path.write_text("1,2,3,4\n5,6,7,8\n")  # what a crash mid-write would leave without rename
    assert not is_complete(path, 3)
    with pytest.raises(DatasetError, match=r"seq_001.txt: 2 boxes for 3 frames"):
        read_result(path, 3)
    path.write_text("1,2,3,4\n5,6,-7,8\n0,0,0,0\n")
    with pytest.raises(DatasetError, match=r"seq_001.txt:2: negative width"):
        read_result(path, 3)
    assert format_boxes([(1.5, 2, 3, 4)]) == "1.5000,2,3,4\n"


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    write_atomic(path, "old\n")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600

    def half_then_crash(tmp: Path) -> None:
        tmp.write_text("ne")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        replace_from(path, half_then_crash)
    assert path.read_text() == "old\n" and sorted(tmp_path.iterdir()) == [path]


def test_plan_skips_complete_results_and_redoes_partial_ones(tmp_path: Path) -> None:
    data = load_dataset(lasot(tmp_path))
    out = tmp_path / "res"
    write_result("lasot", out, "bird-10", [(1, 1, 1, 1)] * 2, [0.1, 0.1])
    write_result("lasot", out, "bird-2", [(1, 1, 1, 1)] * 2, [0.1, 0.1])  # 2 of 3 frames
    jobs, done = plan(data, out)
    assert done == ["bird-10"] and [j.name for j in jobs] == ["bird-2"]
    assert jobs[0].box == (2.0, 3.0, 6.0, 5.0) and jobs[0].num_frames == 3


def test_pool_sizes_never_oversubscribe() -> None:
    assert size_pool(3, 2, 0, "cpu", None, None) == (2, 1)
    assert size_pool(1, 2, 0, None, None, None) == (1, 2)
    assert size_pool(280, 16, 0, None, None, 4) == (4, 4)
    assert size_pool(280, 16, 2, "cuda", None, None) == (2, 8)
    with pytest.raises(RunError, match="needs 4 CPUs, but there are 2"):
        size_pool(3, 2, 0, None, 2, 2)
    with pytest.raises(RunError, match="needs GPUs"):
        size_pool(3, 8, 0, "cuda", None, None)


runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(eval_cli.app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_score_cli_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    root = lasot(tmp_path)
    out = tmp_path / "res"
    code, _, err = cli("score", str(out), str(root))
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    write_result("lasot", out, "bird-10", [(2, 3, 6, 5)] * 2, [0.1, 0.1])
    code, _, err = cli("score", str(out), str(root))
    assert code == 2 and "bird-2.txt: result file is missing" in err
    code, text, err = cli(
        "score", str(out), str(root), "--skip-missing", "--json", str(tmp_path / "s.json")
    )
    assert code == 0 and "| bird-10 |" in text and (tmp_path / "s.json").is_file(), err
    (out / "bird-10.txt").write_text("2,3,6,5\nx\n")
    code, _, err = cli("score", str(out), str(root), "--skip-missing")
    assert code == 2 and "bird-10.txt:2: expected a box" in err and "Traceback" not in err
    gt_file = root / "bird" / "bird-10" / "groundtruth.txt"
    code, _, err = cli("score", str(out), str(root), "--json", str(gt_file))
    assert code == 2 and "is an input" in err


def test_missing_extras_are_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = lasot(tmp_path)
    real = eval_cli.importlib.util.find_spec

    def without(name: str, *args: object) -> object:
        return None if name in ("ray", "matplotlib") else real(name, *args)

    monkeypatch.setattr(eval_cli.importlib.util, "find_spec", without)
    code, _, err = cli("run", str(root), "--bundle", str(tmp_path))
    assert code == 2 and err == (
        "error: Ray is not installed: pip install 'samurai-onnx[eval]', "
        "or run in-process with --backend local\n"
    )
    code, _, err = cli("score", str(tmp_path), str(root), "--plots", str(tmp_path / "p"))
    assert code == 2 and "matplotlib" in err and err.count("\n") == 1


def test_run_cli_rejects_a_bad_bundle_and_results_inside_the_dataset(tmp_path: Path) -> None:
    root = lasot(tmp_path)
    code, _, err = cli("run", str(root), "--bundle", str(tmp_path / "nope"), "--backend", "local")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1
    data = load_dataset(root)
    for inside in (root, data.sequences[0].frames_dir):
        with pytest.raises(RunError, match="is a dataset folder"):
            run_dataset(data, tmp_path / "unused", inside, backend="local")
