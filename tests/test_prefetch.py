"""Prefetch (runtime/ahead.py): the next frame encoded in a background thread while this one is
tracked. What the tracker returns must not change at all; only when the image encoder runs does.
The 256-pixel model: the same loop and graphs as at 1024, ~15x cheaper; the main forms throughout
(results compared bit for bit need the same graph files, not a choice timed per tracker)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SYNTHETIC_BOX, same_rows, synthetic_frames

from samurai_onnx.runtime import tracker as tracker_module
from samurai_onnx.runtime.engine import EngineError
from samurai_onnx.runtime.engine.onnxruntime import OrtEngine
from samurai_onnx.runtime.graphs import SamuraiGraphs
from samurai_onnx.runtime.tracker import Prompt, Tracker

PROMPTS = [
    Prompt(3, 2, points=((340.0, 250.0),), labels=(1,)),  # a late object, one click
    Prompt(5, 1, remove=True),
    Prompt(6, 1, box=(300.0, 210.0, 70.0, 70.0)),  # a correction: object 1 again
]


def _rows(results: list[Any]) -> list[list[Any]]:
    return [[(o.obj_id, o.mask, o.box, o.score, o.present) for o in r.objects] for r in results]


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    return synthetic_frames(8)


@pytest.fixture(scope="module")
def plain(tiny256_bundle: Path, frames: list[np.ndarray]) -> list[list[Any]]:
    tracker = Tracker(tiny256_bundle, prefetch=False, forms="main")
    boxes = [list(SYNTHETIC_BOX), [300.0, 210.0, 70.0, 70.0]]
    return _rows(list(tracker.track(frames, boxes, prompts=PROMPTS)))


def _encoder_threads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of the thread each image encoding ran in, in order."""
    names: list[str] = []
    real = SamuraiGraphs._encode

    def encode(self: SamuraiGraphs, frame: np.ndarray, into_set: int | None = None) -> Any:
        names.append(threading.current_thread().name)
        return real(self, frame, into_set)

    monkeypatch.setattr(SamuraiGraphs, "_encode", encode)
    return names


def test_prefetch_tracks_exactly_as_without(
    tiny256_bundle: Path, frames: list[np.ndarray], plain: list[list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Two objects, a late click, a removal and a correction: the same masks, boxes and scores,
    bit for bit, with every frame encoded in the background thread."""
    threads = _encoder_threads(monkeypatch)
    tracker = Tracker(tiny256_bundle, prefetch=True, forms="main")
    assert tracker.describe().split("; forms")[0].endswith("; prefetch")
    boxes = [list(SYNTHETIC_BOX), [300.0, 210.0, 70.0, 70.0]]
    same_rows(plain, _rows(list(tracker.track(frames, boxes, prompts=PROMPTS))))
    assert len(threads) == len(frames)
    assert all(name.startswith("samurai-ahead") for name in threads), threads


def test_step_api_never_uses_another_frames_features(
    tiny256_bundle: Path, frames: list[np.ndarray], plain: list[list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """``encode_ahead`` of one frame, then ``step`` of another: the frame stepped is encoded
    now, not the one ahead; stepping a frame given ahead takes its features."""
    threads = _encoder_threads(monkeypatch)
    tracker = Tracker(tiny256_bundle, prefetch=True, forms="main", num_frames=len(frames))  # as track() sets
    boxes = [list(SYNTHETIC_BOX), [300.0, 210.0, 70.0, 70.0]]

    def row(objects: list[Any]) -> list[Any]:
        return [(o.obj_id, o.mask, o.box, o.score, o.present) for o in objects]

    tracker.encode_ahead(frames[3])  # not the frame stepped next
    got = [row(tracker.start(frames[0], boxes))]
    tracker.encode_ahead(frames[2])
    got.append(row(tracker.step(frames[1])))
    got.append(row(tracker.step(frames[2])))  # encoded ahead, while frame 1 was stepped
    tracker.encode_ahead(frames[3])
    got.append(row(tracker.step(frames[3], PROMPTS[:1])))  # with frame 3's click
    same_rows(plain[:4], got)
    main = threading.current_thread().name
    assert [name == main for name in threads] == [False, True, False, True, False]


def test_what_track_reads_ahead(tiny256_bundle: Path, frames: list[np.ndarray]) -> None:
    """``max_frames`` reads no frame past it; a source that fails on frame 3 yields frames 0-2
    first, then its error (as without prefetch)."""
    read: list[int] = []

    def source(fail_at: int | None) -> Iterator[np.ndarray]:
        for i, frame in enumerate(frames):
            if i == fail_at:
                raise OSError("frame 3 is corrupt")
            read.append(i)
            yield frame

    for prefetch in (False, True):
        tracker = Tracker(tiny256_bundle, prefetch=prefetch, forms="main")
        read.clear()
        assert len(list(tracker.track(source(None), list(SYNTHETIC_BOX), max_frames=3))) == 3
        assert read == [0, 1, 2]
        seen = []
        with pytest.raises(OSError, match="frame 3 is corrupt"):
            for result in tracker.track(source(3), list(SYNTHETIC_BOX)):
                seen.append(result.index)
        assert seen == [0, 1, 2]


def test_an_error_in_the_background_is_raised_by_its_step(
    tiny256_bundle: Path, frames: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An engine error while frame 2 is encoded ahead comes out of ``step(frame 2)``, as the
    same one-line ``EngineError`` as without prefetch; frames 0 and 1 are tracked."""
    real = SamuraiGraphs._encode
    calls = []

    def encode(self: SamuraiGraphs, frame: np.ndarray, into_set: int | None = None) -> Any:
        calls.append(1)
        if len(calls) == 3:
            raise EngineError("image_encoder: ONNX Runtime failed (out of memory)")
        return real(self, frame, into_set)

    monkeypatch.setattr(SamuraiGraphs, "_encode", encode)
    tracker = Tracker(tiny256_bundle, prefetch=True, forms="main")
    seen = []
    with pytest.raises(EngineError, match="out of memory"):
        for result in tracker.track(frames, list(SYNTHETIC_BOX)):
            seen.append(result.index)
    assert seen == [0, 1]


def _fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trackers made next run every graph with fixed buffers per signature (the CUDA-graph path,
    ``runtime/engine/captured.py``, on the CPU)."""
    monkeypatch.setattr(
        tracker_module, "create_engine", lambda settings: OrtEngine(settings, fixed_buffers=True)
    )


def _captures(tracker: Tracker) -> int:
    """Signatures captured so far, over every graph of ``tracker``."""
    return sum(
        len(s.captured.captures)  # type: ignore[attr-defined]
        for s in tracker.graphs.sessions.values()
        if getattr(s, "captured", None) is not None
    )


def test_prefetch_with_fixed_buffers_tracks_exactly_as_without(
    tiny256_bundle: Path, frames: list[np.ndarray], plain: list[list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """CUDA graphs and prefetch together: the image encoder writes into output sets in turn,
    so the frame encoded ahead never overwrites the features of the frame being tracked; the
    same masks, boxes and scores bit for bit, every frame encoded in the background, and every
    capture made with no other device work in flight (``engine/gate.py``)."""
    _fixed(monkeypatch)
    threads = _encoder_threads(monkeypatch)
    tracker = Tracker(tiny256_bundle, prefetch=True, forms="main")
    assert tracker.prefetch and "fixed buffers" in tracker.describe()
    boxes = [list(SYNTHETIC_BOX), [300.0, 210.0, 70.0, 70.0]]
    # results kept as returned: masks must not change under later frames' runs
    same_rows(plain, _rows(list(tracker.track(frames, boxes, prompts=PROMPTS))))
    assert all(name.startswith("samurai-ahead") for name in threads), threads
    # the encoder alternated between two output sets (two signatures, each captured)
    encoder = tracker.graphs.sessions["image_encoder"].captured  # type: ignore[attr-defined]
    assert len(encoder.captures) == 2
    assert tracker.engine.gate.exclusive_entries == _captures(tracker) > 2  # type: ignore[attr-defined]


def test_fixed_buffers_keep_features_encoded_ahead_through_other_frames(
    tiny256_bundle: Path, frames: list[np.ndarray], plain: list[list[Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """Two frames encoded ahead, then two frames stepped that were not: those are encoded in
    the caller's thread into a set neither pending frame holds, and stepping the frames
    encoded ahead afterwards takes their features intact (a scheme that alternated two sets
    would overwrite them and track frames 2 and 3 off)."""
    _fixed(monkeypatch)
    threads = _encoder_threads(monkeypatch)
    tracker = Tracker(tiny256_bundle, prefetch=True, forms="main", num_frames=len(frames))  # as track() sets
    boxes = [list(SYNTHETIC_BOX), [300.0, 210.0, 70.0, 70.0]]

    def row(objects: list[Any]) -> list[Any]:
        return [(o.obj_id, o.mask, o.box, o.score, o.present) for o in objects]

    tracker.encode_ahead(frames[2])
    tracker.encode_ahead(frames[3])
    got = [row(tracker.start(frames[0], boxes)), row(tracker.step(frames[1]))]
    got += [row(tracker.step(frames[2])), row(tracker.step(frames[3], PROMPTS[:1]))]
    same_rows(plain[:4], got)
    main = threading.current_thread().name
    assert [name == main for name in threads] == [False, False, True, True]


def test_prefetch_setting_is_checked(tiny256_bundle: Path) -> None:
    with pytest.raises(tracker_module.TrackerError, match="True or False"):
        Tracker(tiny256_bundle, prefetch="yes")  # type: ignore[arg-type]
