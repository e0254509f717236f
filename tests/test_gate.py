"""The device gate (runtime/engine/gate.py): device work of several threads at once, CUDA-graph
captures alone. Threads stand in for prefetch's encoder thread and the tracker's thread."""

from __future__ import annotations

import threading
import time

import pytest

from samurai_onnx.runtime.engine.gate import DeviceGate


def _later(gate: DeviceGate, mode: str, log: list[str], name: str) -> threading.Thread:
    """A thread that enters ``gate`` in ``mode`` and notes when it got in."""

    def enter() -> None:
        with getattr(gate, mode)():
            log.append(name)

    thread = threading.Thread(target=enter)
    thread.start()
    return thread


def test_a_capture_waits_for_shared_work_and_blocks_new_work() -> None:
    gate, log = DeviceGate(), []
    with gate.shared():  # an encoder run in flight
        capture = _later(gate, "exclusive", log, "capture")
        time.sleep(0.2)
        assert log == []  # the capture waits for the run
        other = _later(gate, "shared", log, "run")
        time.sleep(0.2)
        assert log == []  # a new run waits behind the waiting capture
        log.append("first run ends")
    capture.join(5)
    other.join(5)
    assert log == ["first run ends", "capture", "run"]
    assert gate.exclusive_entries == 1


def test_shared_work_overlaps() -> None:
    gate, log = DeviceGate(), []
    with gate.shared():
        other = _later(gate, "shared", log, "run")
        other.join(5)
        assert log == ["run"]  # got in while this thread was inside


def test_a_thread_enters_again_and_never_deadlocks_on_itself() -> None:
    gate = DeviceGate()
    with gate.exclusive(), gate.shared(), gate.exclusive():  # a capture uploads its inputs
        pass
    with gate.shared(), gate.shared():  # a run uploads its host feeds
        with pytest.raises(RuntimeError, match="inside shared device work"):
            with gate.exclusive():
                pass
    # all left: another thread gets exclusive access at once
    log: list[str] = []
    _later(gate, "exclusive", log, "capture").join(5)
    assert log == ["capture"]
