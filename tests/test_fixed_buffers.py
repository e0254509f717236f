"""Fixed buffers per signature (runtime/engine/captured.py), the CUDA-graph path, on the CPU.

CUDA graphs need every run of a signature to read and write the same buffers; the engine keeps
those buffers and rewrites them on every run. These tests check that this changes nothing the
tracker sees: a video with several objects, a late click, a removal and a mask prompt gives the
same masks, boxes and scores as the regular path, and outputs stay valid as long as promised.
Both paths run the main forms (compared bit for bit: the same graph files, not a choice timed
per tracker).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from conftest import SYNTHETIC_BOX, same_rows, synthetic_frames
from onnx import TensorProto, helper

from samurai_onnx.runtime import tracker as tracker_module
from samurai_onnx.runtime.contract import GraphContract, TensorSpec
from samurai_onnx.runtime.engine import EngineSettings
from samurai_onnx.runtime.engine.captured import MAX_GRAPHS
from samurai_onnx.runtime.engine.onnxruntime import OrtEngine
from samurai_onnx.runtime.tracker import Prompt, Tracker


def _fixed_tracker(bundle: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Tracker:
    monkeypatch.setattr(
        tracker_module, "create_engine", lambda settings: OrtEngine(settings, fixed_buffers=True)
    )
    tracker = Tracker(bundle, forms="main", **kwargs)
    monkeypatch.undo()
    return tracker


def _video(tracker: Tracker, frames: list[np.ndarray], mask: np.ndarray) -> list[list[Any]]:
    b0 = list(SYNTHETIC_BOX)
    schedule = {
        0: [Prompt(0, 0, box=b0), Prompt(0, 1, box=(300.0, 210.0, 70.0, 70.0))],
        3: [Prompt(3, 2, points=((340.0, 250.0),), labels=(1,))],  # a late object, one click
        5: [Prompt(5, 1, remove=True), Prompt(5, 3, mask=mask)],  # removal and a mask prompt
    }
    rows = []
    for t, frame in enumerate(frames):
        objs = tracker.step(frame, schedule.get(t, ()))
        # kept as returned: results must stay valid after later frames (no copy here)
        rows.append([(o.obj_id, o.mask, o.box, o.score, o.present) for o in objs])
    return rows


def test_the_tracker_is_unchanged_with_fixed_buffers(
    tiny256_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frames = synthetic_frames(8)
    mask = np.zeros(frames[0].shape[:2], np.uint8)
    mask[200:260, 40:120] = 1
    regular = Tracker(tiny256_bundle, num_frames=8, forms="main")
    fixed = _fixed_tracker(tiny256_bundle, monkeypatch, num_frames=8)
    assert "fixed buffers" in fixed.engine.describe()
    want = _video(regular, frames, mask)
    got = _video(fixed, frames, mask)
    same_rows(want, got)
    # a second video on the same trackers reuses the pools' buffers (so run signatures, and
    # CUDA graphs, repeat); what they still hold from the first video must not matter
    assert fixed.session is not None
    buffers = {id(v) for v in (fixed.session.pools.memory, *fixed.session.pools._spare)}
    fixed.reset()
    regular.reset()
    same_rows(want, _video(fixed, frames, mask))
    same_rows(want, _video(regular, frames, mask))
    assert {id(v) for v in (fixed.session.pools.memory, *fixed.session.pools._spare)} == buffers
    # the fixed path really ran (every graph's steady-state replays: the test below)
    captured = {n: s.captured for n, s in fixed.graphs.sessions.items()}  # type: ignore[attr-defined]
    assert all(c is not None for c in captured.values())
    assert captured["image_encoder"].captures and captured["memory_encoder"].runs
    assert len(captured["memory_encoder"].captures) <= MAX_GRAPHS


def _add_graph(tmp_path: Path) -> tuple[Path, GraphContract]:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    s = helper.make_tensor_value_info("s", TensorProto.FLOAT, ["n", 3])
    graph = helper.make_graph([helper.make_node("Add", ["x", "y"], ["s"])], "g", [x, y], [s])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    path = tmp_path / "add.onnx"
    onnx.save(model, str(path))
    contract = GraphContract(
        "add",
        (TensorSpec("x", "float32", ("n", 3)), TensorSpec("y", "float32", ("n", 3))),
        (TensorSpec("s", "float32", ("n", 3)),),
    )
    return path, contract


def test_signatures_buffers_and_bounds(tmp_path: Path) -> None:
    """A signature gets fixed buffers the third time in a row it is seen (its second run writes
    into its first run's outputs); host feeds are copied into them on every run (the caller's
    arrays are never written); outputs keep their buffer."""
    path, contract = _add_graph(tmp_path)
    engine = OrtEngine(EngineSettings(), fixed_buffers=True)
    session = engine.load(path, contract)
    runs = session.captured  # type: ignore[attr-defined]
    x = np.ones((2, 3), np.float32)
    out1 = session.run({"x": x, "y": x})["s"]
    first = engine.download(out1)
    assert not runs.captures and len(runs.pending) == 1
    out2 = session.run({"x": x, "y": 2 * x})["s"]
    second = engine.download(out2)
    assert not runs.captures and len(runs.pending) == 1
    out3 = session.run({"x": x, "y": 3 * x})["s"]
    third = engine.download(out3)
    assert len(runs.captures) == 1 and not runs.pending
    out4 = session.run({"x": 2 * x, "y": 3 * x})["s"]
    # the signature's output buffer, rewritten: the one its first run wrote, so that what reads
    # it sees the same buffer from the first run on (and its own signature repeats)
    assert out1 is out2 is out3 is out4
    assert session.replay_counts() is None  # CUDA graphs off: nothing is replayed
    assert (runs.replays, runs.runs) == (1, 4)
    np.testing.assert_array_equal(first, 2 * x)
    np.testing.assert_array_equal(second, 3 * x)
    np.testing.assert_array_equal(third, 4 * x)
    np.testing.assert_array_equal(engine.download(out4), 5 * x)
    assert (x == 1).all()  # the caller's array was not used as the fixed buffer
    # another shape is another signature; a device value's buffer is part of the signature
    dev = engine.upload(np.full((4, 3), 7, np.float32))
    for _ in range(3):
        got = engine.download(session.run({"x": dev, "y": np.ones((4, 3), np.float32)})["s"])
        np.testing.assert_array_equal(got, np.full((4, 3), 8, np.float32))
    assert len(runs.captures) == 2
    # no more than MAX_GRAPHS signatures get buffers; the others run as before
    for n in range(5, 6 + MAX_GRAPHS):
        for _ in range(3):
            ones = np.ones((n, 3), np.float32)
            got = engine.download(session.run({"x": ones, "y": ones})["s"])
            np.testing.assert_array_equal(got, np.full((n, 3), 2, np.float32))
    assert len(runs.captures) == MAX_GRAPHS


def test_cuda_graph_sessions_carry_graph_ids_and_fall_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With CUDA graphs on, runs carry ``gpu_graph_id`` (-1: not captured, 1.. per signature;
    the CPU provider ignores it, so the run path is exercised here); a graph ONNX Runtime
    refuses to capture is loaded again without the option, runs as before, and says so."""
    from samurai_onnx.runtime.engine.onnxruntime import create_session

    path, contract = _add_graph(tmp_path)
    engine = OrtEngine(EngineSettings())
    engine.cuda_graph = engine.fixed_buffers = True  # as if the CUDA provider had the option
    ids: list[str] = []
    session = engine.load(path, contract)
    original = session._run_options  # type: ignore[attr-defined]

    def spy(graph_id: int) -> Any:
        ids.append(str(graph_id))
        return original(graph_id)

    session.captured.run_options = spy  # type: ignore[attr-defined]
    x = np.ones((2, 3), np.float32)
    for k in range(4):
        got = engine.download(session.run({"x": x, "y": k * x})["s"])
        np.testing.assert_array_equal(got, (k + 1) * x)
    # seen twice (run as before, into the first run's outputs), then captured and replayed
    assert ids == ["-1", "-1", "1", "1"]
    assert (session.captured.replays, session.captured.runs) == (1, 4)  # type: ignore[attr-defined]
    assert session.replay_counts() == (1, 4, 1)

    calls: list[Any] = []

    def refuse_once(p: Path, providers: Any) -> Any:
        calls.append(providers)
        if len(calls) == 1:
            raise RuntimeError(
                "This session cannot use the graph capture feature as requested by the user as "
                "all compute graph nodes have not been partitioned to the CUDAExecutionProvider"
            )
        return create_session(p, providers)

    monkeypatch.setattr(engine, "_session", refuse_once)
    with caplog.at_level("WARNING"):
        fallback = engine.load(path, contract)
    assert len(calls) == 2 and "no CUDA graph" in caplog.text
    assert "CUDA graphs except add" in engine.describe()
    assert fallback.captured is None and not fallback.graph_ids  # type: ignore[attr-defined]
    np.testing.assert_array_equal(engine.download(fallback.run({"x": x, "y": x})["s"]), 2 * x)


def test_every_graph_replays_in_the_steady_state(
    tiny256_bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the memory bank is full, every graph of a frame runs a captured signature (on a
    GPU: one CUDA graph launch each), and the replays give the regular path's results. A
    graph's signature names the buffers it reads, so this holds only if each graph's outputs
    stay in the same buffers from its first run on: with fresh buffers at first runs the
    decoder and the memory encoder never settled (a 1024-pixel video, 34 frames). And the
    growing bank's signatures, which repeat only by the allocator's address reuse, must not
    spend graph ids: capturing at a second sighting gave the decoder 6 captures by frame 17
    and none left for the steady state (an H200 bench: 0 of 240 decoder runs replayed)."""
    from samurai_onnx.compiler.evaluate.bench import FULL_BANK

    frames = synthetic_frames(26)
    fixed = _fixed_tracker(tiny256_bundle, monkeypatch, num_frames=26, overrides=FULL_BANK)
    regular = Tracker(tiny256_bundle, num_frames=26, overrides=FULL_BANK, forms="main")
    sessions = fixed.graphs.sessions
    runs = {n: s.captured for n, s in sessions.items()}  # type: ignore[attr-defined]
    rows: list[list[Any]] = [[], []]
    for i, frame in enumerate(frames):
        if i == 23:
            before = {n: (r.replays, r.runs) for n, r in runs.items()}
        for tracker, out in zip((fixed, regular), rows, strict=True):
            objs = tracker.start(frame, [list(SYNTHETIC_BOX)]) if i == 0 else tracker.step(frame)
            out.append([(o.obj_id, o.mask.copy(), o.box, o.score, o.present) for o in objs])
    same_rows(rows[1], rows[0])
    for name, r in runs.items():
        replays, total = r.replays - before[name][0], r.runs - before[name][1]
        assert replays == total, f"{name}: {replays} of {total} runs replayed"
        assert len(r.captures) <= 2, f"{name}: {len(r.captures)} captures"
    assert {n for n, (_, r) in before.items() if r} >= {
        "preprocess", "image_encoder", "memory_attention", "mask_decoder", "memory_encoder"
    }
