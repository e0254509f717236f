"""A readers-writer gate over an engine's device work: many threads run, a capture runs alone.

Why: ONNX Runtime captures a CUDA graph with ``cudaStreamCaptureModeGlobal`` after a
``cudaDeviceSynchronize``; while that capture is open, a CUDA call from any other thread that may
synchronise (a copy to or from the host, an allocation, the end-of-run stream sync) is illegal
and breaks the capture or fails itself. With prefetch (``runtime/ahead.py``) the image encoder
runs in a second thread beside the other graphs, so a capture in either thread must wait until
the other thread's device work is done, and block new work until it ends. Captures are rare (a
few per graph, early in a video); everything else (runs, replays, uploads, downloads) is shared
and costs one uncontended lock a call.

A thread already inside the gate enters again freely (a run uploads its host feeds; a capture
uploads its fixed inputs). A thread holding shared access may not ask for exclusive access:
it would wait for itself, so that raises instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class DeviceGate:
    """Shared access for device work, exclusive access for CUDA-graph captures (see above).

    A waiting capture goes first: new shared access waits for it, so a busy second thread
    cannot starve it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0  # threads inside with shared access
        self._exclusive: int | None = None  # the thread id inside with exclusive access
        self._waiting = 0  # threads waiting for exclusive access
        self._depth = threading.local()  # per thread: how deep inside the gate it is
        self.exclusive_entries = 0  # how many captures went through (tests read it)

    def _level(self) -> int:
        return int(getattr(self._depth, "n", 0))

    @contextmanager
    def _again(self) -> Iterator[None]:
        """A thread already inside enters again: no wait, only its depth counts."""
        self._depth.n += 1
        try:
            yield
        finally:
            self._depth.n -= 1

    @contextmanager
    def _held(self, release: Callable[[], None]) -> Iterator[None]:
        """The thread is inside until the block ends; then ``release`` (under the lock) and
        every waiting thread looks again."""
        self._depth.n = 1
        try:
            yield
        finally:
            self._depth.n = 0
            with self._cond:
                release()
                self._cond.notify_all()

    def _leave_shared(self) -> None:
        self._shared -= 1

    def _leave_exclusive(self) -> None:
        self._exclusive = None

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Device work that may overlap other threads' device work, but not a capture."""
        if self._level():  # already inside (shared or exclusive): no new wait
            with self._again():
                yield
            return
        with self._cond:
            while self._exclusive is not None or self._waiting:
                self._cond.wait()
            self._shared += 1
        with self._held(self._leave_shared):
            yield

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """Device work no other thread's device work may overlap (a CUDA-graph capture)."""
        me = threading.get_ident()
        if self._exclusive == me:
            with self._again():
                yield
            return
        if self._level():
            raise RuntimeError("a CUDA-graph capture was asked for inside shared device work")
        with self._cond:
            self._waiting += 1
            try:
                while self._exclusive is not None or self._shared:
                    self._cond.wait()
            finally:
                self._waiting -= 1
            self._exclusive = me
            self.exclusive_entries += 1
        with self._held(self._leave_exclusive):
            yield
