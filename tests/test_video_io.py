"""Frame sources and result writers on small synthetic videos and frame folders."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from samurai_onnx.runtime.video import (
    AnnotatedVideoWriter,
    BoxWriter,
    JsonlWriter,
    MaskWriter,
    ObjectResult,
    VideoError,
    open_frames,
    webcam_index,
)

W, H = 64, 48


def _rgb(k: int, w: int = W, h: int = H) -> np.ndarray:
    """A solid frame whose colour encodes its index (red ramps up, blue ramps down)."""
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = (20 + 15 * k, 100, 220 - 15 * k)
    return frame


def _write_video(path: Path, n: int, fourcc: str = "mp4v", fps: float = 12.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), fps, (W, H))
    assert writer.isOpened()
    for k in range(n):
        writer.write(cv2.cvtColor(_rgb(k), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def _count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened()
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def _one_line_error(excinfo: pytest.ExceptionInfo[VideoError], *needles: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


@pytest.mark.parametrize(("suffix", "fourcc"), [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_video_file(tmp_path: Path, suffix: str, fourcc: str) -> None:
    path = _write_video(tmp_path / f"clip{suffix}", 7, fourcc)
    with open_frames(path) as src:
        assert src.fps == pytest.approx(12.0)
        assert src.frame_count == 7
        assert src.size == (W, H)
        frames = list(src)
        assert len(frames) == 7
        for k, f in enumerate(frames):
            assert f.shape == (H, W, 3) and f.dtype == np.uint8
            assert np.abs(f.astype(int) - _rgb(k)).mean() < 6  # RGB order, right frame
        assert len(list(src)) == 7  # a second pass decodes from the start again
    assert len(list(open_frames(str(path)))) == 7  # str paths too


def test_video_streams_lazily(tmp_path: Path) -> None:
    path = _write_video(tmp_path / "clip.mp4", 5)
    src = open_frames(path)
    it = iter(src)
    first = next(it)
    assert np.abs(first.astype(int) - _rgb(0)).mean() < 6
    src.close()  # closing mid-iteration releases the decoder


def test_folder_numeric_order(tmp_path: Path) -> None:
    for k in range(12):  # 0.jpg .. 11.jpg: "10" must follow "9"
        cv2.imwrite(str(tmp_path / f"{k}.jpg"), cv2.cvtColor(_rgb(k), cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("ignored")
    with open_frames(tmp_path) as src:
        assert src.frame_count == 12 and src.size == (W, H) and src.fps is None
        frames = list(src)
    for k, f in enumerate(frames):
        assert np.abs(f.astype(int) - _rgb(k)).mean() < 4


def test_folder_png_name_order_exact(tmp_path: Path) -> None:
    names = ["frame_b.png", "frame_a.PNG", "frame_c.jpeg"]
    for k, name in enumerate(names):
        ext = ".jpg" if name.endswith("jpeg") else ".png"
        _ok, buf = cv2.imencode(ext, cv2.cvtColor(_rgb(k), cv2.COLOR_RGB2BGR))
        (tmp_path / name).write_bytes(buf.tobytes())
    frames = list(open_frames(tmp_path))
    np.testing.assert_array_equal(frames[0], _rgb(1))  # frame_a, lossless PNG, RGB order
    np.testing.assert_array_equal(frames[1], _rgb(0))
    assert len(frames) == 3


def test_iterables() -> None:
    frames = [_rgb(k) for k in range(3)]
    src = open_frames(frames)
    assert src.frame_count == 3 and src.fps is None
    assert [f is g for f, g in zip(src, frames, strict=True)] == [True] * 3
    assert src.size == (W, H)
    gen = open_frames(f for f in frames)
    assert len(list(gen)) == 3
    with pytest.raises(VideoError, match="only once"):
        list(gen)


def test_webcam_index_parsing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert webcam_index(0) == 0
    assert webcam_index(2) == 2
    assert webcam_index("1") == 1
    assert webcam_index("video.mp4") is None
    assert webcam_index("1.5") is None
    assert webcam_index(True) is None
    assert webcam_index([np.zeros((2, 2, 3), np.uint8)]) is None
    monkeypatch.chdir(tmp_path)
    (tmp_path / "3").mkdir()  # an existing folder named "3" wins over webcam 3
    assert webcam_index("3") is None


def test_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(VideoError) as e:
        open_frames(tmp_path / "nope.mp4")
    _one_line_error(e, "nope.mp4", "does not exist")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    with pytest.raises(VideoError) as e:
        open_frames(garbage)
    _one_line_error(e, "garbage.mp4", "cannot open", "re-encode")
    empty = _write_video(tmp_path / "empty.mp4", 0)
    with pytest.raises(VideoError) as e:
        open_frames(empty)
    _one_line_error(e, "empty.mp4")
    other = tmp_path / "clip.gif"
    other.write_bytes(b"GIF89a")
    with pytest.raises(VideoError) as e:
        open_frames(other)
    _one_line_error(e, "clip.gif", "not a supported video", ".mp4")
    with pytest.raises(VideoError) as e:
        open_frames(3.5)  # type: ignore[arg-type]
    _one_line_error(e, "float")


def test_folder_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(VideoError) as e:
        open_frames(empty)
    _one_line_error(e, "no .jpg/.jpeg/.png frames")

    broken = tmp_path / "broken"
    broken.mkdir()
    cv2.imwrite(str(broken / "0.png"), _rgb(0))
    (broken / "1.jpg").write_bytes(b"not a jpeg")
    src = open_frames(broken)
    with pytest.raises(VideoError) as e:
        list(src)
    _one_line_error(e, "frame 1", "1.jpg", "cannot decode")

    sizes = tmp_path / "sizes"
    sizes.mkdir()
    for k in range(3):
        cv2.imwrite(str(sizes / f"{k}.png"), _rgb(k, w=W if k < 2 else 32))
    with pytest.raises(VideoError) as e:
        list(open_frames(sizes))
    _one_line_error(e, "frame 2", "32x48", f"{W}x{H}")


@pytest.mark.parametrize(
    ("bad", "needles"),
    [
        (np.zeros((H, W), np.uint8), ("frame 1", "grayscale", "COLOR_GRAY2RGB")),
        (np.zeros((H, W, 4), np.uint8), ("frame 1", "RGBA", "frame[..., :3]")),
        (np.zeros((H, W, 3), np.float32), ("frame 1", "float32", "astype(np.uint8)")),
        (np.zeros((H, W, 3), np.uint16), ("frame 1", "uint16")),
        (np.zeros((H, 32, 3), np.uint8), ("frame 1", "32x48", f"{W}x{H}")),
    ],
)
def test_iterable_frame_errors(bad: np.ndarray, needles: tuple[str, ...]) -> None:
    with pytest.raises(VideoError) as e:
        list(open_frames([_rgb(0), bad]))
    _one_line_error(e, *needles)


def test_empty_iterable() -> None:
    with pytest.raises(VideoError) as e:
        list(open_frames([]))
    _one_line_error(e, "no frames")


def _results(frame_idx: int, present: tuple[bool, bool] = (True, True)) -> list[ObjectResult]:
    out = []
    for k in range(2):
        mask = np.zeros((H, W), bool)
        mask[10 + k : 20 + k, 5 + frame_idx : 25 + frame_idx] = True
        box = (5 + frame_idx, 10 + k, 19, 9) if present[k] else None
        out.append(ObjectResult(k, mask & present[k], box, 0.5 + 0.1 * k, present[k]))
    return out


def test_box_writer(tmp_path: Path) -> None:
    with BoxWriter(tmp_path / "single.txt", 1) as w:
        w.write(0, None, _results(0)[:1])
        w.write(1, None, [])  # object missing from the results
        w.write(3, None, _results(3, (False, True))[:1])  # frame 2 skipped, absent object
    assert (tmp_path / "single.txt").read_text().splitlines() == [
        "5,10,19,9", "0,0,0,0", "0,0,0,0", "0,0,0,0"]
    with BoxWriter(tmp_path / "out" / "boxes.txt", 2) as w:
        w.write(0, None, _results(0))
        w.write(1, None, _results(1, (True, False)))
        with pytest.raises(ValueError, match="in order"):
            w.write(0, None, _results(0))
    assert (tmp_path / "out" / "boxes_obj0.txt").read_text() == "5,10,19,9\n6,10,19,9\n"
    assert (tmp_path / "out" / "boxes_obj1.txt").read_text() == "5,11,19,9\n0,0,0,0\n"
    (tmp_path / "a_file").write_text("x")
    for make in (lambda p: BoxWriter(p / "b.txt", 1), JsonlWriter, lambda p: MaskWriter(p, 1)):
        with pytest.raises(VideoError) as e:
            make(tmp_path / "a_file" / "sub")
        _one_line_error(e, "cannot create folder", "a_file")


def _read_png(path: Path) -> np.ndarray:
    png = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert png is not None, path
    return png


def test_mask_writer(tmp_path: Path) -> None:
    with MaskWriter(tmp_path / "masks", 2) as w:
        w.write(0, _rgb(0), _results(0))
        w.write(1, None, _results(1)[:1])  # object 1 missing: an empty mask
    for k in range(2):
        png = _read_png(tmp_path / "masks" / f"obj{k}" / "000000.png")
        assert png.dtype == np.uint8 and set(np.unique(png)) == {0, 255}
        np.testing.assert_array_equal(png > 0, _results(0)[k].mask)
    missing = _read_png(tmp_path / "masks" / "obj1" / "000001.png")
    assert missing.shape == (H, W) and not missing.any()
    assert not list((tmp_path / "masks").rglob("*.tmp"))


def test_jsonl_writer(tmp_path: Path) -> None:
    path = tmp_path / "res.jsonl"
    with JsonlWriter(path) as w:
        w.write(0, None, _results(0))
        assert len(w.temp.read_text().splitlines()) == 1  # flushed before close...
        assert not path.exists()  # ...under a temporary name, moved into place on close
        w.write(1, None, _results(1, (True, False)))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0] == {"frame": 0, "objects": [
        {"id": 0, "box": [5, 10, 19, 9], "score": 0.5, "present": True, "prompted": False},
        {"id": 1, "box": [5, 11, 19, 9], "score": pytest.approx(0.6), "present": True, "prompted": False}]}
    assert lines[1]["objects"][1] == {"id": 1, "box": None, "score": pytest.approx(0.6),
                                      "present": False, "prompted": False}


def test_annotated_video_writer(tmp_path: Path) -> None:
    path = tmp_path / "out.mp4"
    with AnnotatedVideoWriter(path, 10.0, (W, H)) as w:
        assert w.partial.parent == tmp_path and w.partial.name.startswith(".out.mp4.")
        assert w.partial.name.endswith(".partial.mp4")
        for k in range(5):
            w.write(k, _rgb(k), _results(k))
        assert w.partial.exists() and not path.exists()
    assert path.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]
    assert _count_frames(path) == 5
    with open_frames(path) as src:
        first = next(iter(src))
    assert np.abs(first.astype(int) - _rgb(0)).max() > 50  # something was drawn


def test_annotated_video_survives_exception(tmp_path: Path) -> None:
    path = tmp_path / "crash.mp4"
    with pytest.raises(RuntimeError, match="boom"), AnnotatedVideoWriter(path, 10.0, (W, H)) as w:
        for k in range(3):
            w.write(k, _rgb(k), _results(k))
        raise RuntimeError("boom")
    assert _count_frames(path) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["crash.mp4"]


def test_annotated_video_writer_errors(tmp_path: Path) -> None:
    with pytest.raises(VideoError) as e:
        AnnotatedVideoWriter(tmp_path / "bad.mp4", 10.0, (0, 0))
    _one_line_error(e, "cannot open", "bad.mp4")
    assert not list(tmp_path.iterdir())  # no temporary file left behind
    with AnnotatedVideoWriter(tmp_path / "size.mp4", 10.0, (W, H)) as w:
        with pytest.raises(VideoError) as e:
            w.write(0, _rgb(0, w=32), [])
        _one_line_error(e, "frame 0", "32x48")
    assert not (tmp_path / "size.mp4").exists()  # no frames: no file


def test_writers_change_nothing_until_a_frame_is_written(tmp_path: Path) -> None:
    """An existing output keeps its bytes until the new one is complete; a writer closed without
    frames (a run refused or failed before frame 0) leaves it as it was, and no stray files."""
    paths = {name: tmp_path / name for name in ("b.txt", "r.jsonl", "v.mp4")}
    for path in paths.values():
        path.write_bytes(b"precious")
    writers = [
        BoxWriter(paths["b.txt"], 1),
        JsonlWriter(paths["r.jsonl"]),
        AnnotatedVideoWriter(paths["v.mp4"], 10.0, (W, H)),
        MaskWriter(tmp_path / "masks", 2),
    ]
    for w in writers:
        w.close()
    assert all(p.read_bytes() == b"precious" for p in paths.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(paths)  # masks/ removed again
    with BoxWriter(paths["b.txt"], 1) as w:
        w.write(0, None, _results(0)[:1])
        assert paths["b.txt"].read_bytes() == b"precious"
    assert paths["b.txt"].read_text() == "5,10,19,9\n"
    assert oct(paths["b.txt"].stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_writers_discard(tmp_path: Path) -> None:
    """``discard`` drops what a writer wrote: temporary files, its new PNGs, folders it made."""
    old_png = tmp_path / "masks" / "obj0" / "000005.png"  # of a frame this run does not reach
    old_png.parent.mkdir(parents=True)
    old_png.write_bytes(b"old")
    masks = MaskWriter(tmp_path / "masks", 2)
    boxes = BoxWriter(tmp_path / "out" / "b.txt", 2)
    for k in range(2):
        masks.write(k, _rgb(k), _results(k))
        boxes.write(k, None, _results(k))
    masks.discard()
    boxes.discard()
    assert old_png.read_bytes() == b"old"  # there before: never removed
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "masks", "masks/obj0", "masks/obj0/000005.png"]  # fmt: skip


def test_box_encoding_present_one_pixel_and_non_finite_scores(tmp_path: Path) -> None:
    """A present one-pixel mask at (0, 0) is written 0,0,1,1, never 0,0,0,0 (= absent), and a
    NaN/inf score is null in the JSONL (which stays valid JSON)."""
    mask = np.zeros((H, W), bool)
    mask[0, 0] = True
    dot = ObjectResult(0, mask, (0, 0, 0, 0), float("nan"), True)
    gone = ObjectResult(1, np.zeros((H, W), bool), None, float("inf"), False)
    with BoxWriter(tmp_path / "b.txt", 2) as w:
        w.write(0, None, [dot, gone])
    assert (tmp_path / "b_obj0.txt").read_text() == "0,0,1,1\n"
    assert (tmp_path / "b_obj1.txt").read_text() == "0,0,0,0\n"
    with JsonlWriter(tmp_path / "r.jsonl") as j:
        j.write(0, None, [dot, gone])
    text = (tmp_path / "r.jsonl").read_text()
    assert "NaN" not in text and "Infinity" not in text
    row = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSONL"))
    assert row["objects"] == [
        {"id": 0, "box": [0, 0, 1, 1], "score": None, "present": True, "prompted": False},
        {"id": 1, "box": None, "score": None, "present": False, "prompted": False},
    ]
