"""SIGINT and SIGTERM for the command lines: stop cleanly, never half-write an output.

Why: Python turns Ctrl-C (SIGINT) into ``KeyboardInterrupt`` but lets SIGTERM (``timeout``, a
job scheduler, ``kill``) end the process on the spot, so outputs that are finalised on the way
out (the MP4 written to a temporary file and renamed) were lost. Here both signals are handled
the same way; only the exit code tells them apart (128 + the signal number: 130 and 143).

``handle_signals(deferred=True)`` (``samurai-run``) only records the first signal; the tracking
loop calls ``StopFlag.check()`` between frames, so the frame in progress is finished and written
to every output before the run stops. A second signal stops at once. ``deferred=False``
(``samurai-compile``) raises at once, so its cleanup (removing the staging folder) runs, and the
compile also calls ``StopFlag.honour()`` after every pass and before the bundle is put in
place, in case a library swallowed that raise. After the stop has been raised, further signals
are ignored so that cleanup is not cut short.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The run was stopped by ``signum``; the process should exit with ``exit_code``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def exit_code(exc: BaseException) -> int:
    """128 + the signal number for a stop by signal (130 for a plain KeyboardInterrupt)."""
    return exc.exit_code if isinstance(exc, Interrupted) else 128 + signal.SIGINT


class StopFlag:
    """The first signal received (if any) and whether the stop has already been raised."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.raised = False

    def check(self) -> None:
        """Raise ``Interrupted`` if a signal arrived (called between frames)."""
        if self.signum is not None and not self.raised:
            self.raised = True
            raise Interrupted(self.signum)

    def honour(self) -> None:
        """Raise ``Interrupted`` if a signal arrived, even if the handler raised it already.

        Called between steps that must not continue after a stop (``samurai-compile``'s passes).
        Code still running after the handler's raise means a library swallowed it: the handler
        raises in whatever Python code runs when the signal lands, and C++ that calls back into
        Python and catches every error (onnxsim's constant folding does) turns it into a
        skipped step. Seen: a Ctrl-C during a simplify pass, and the compile ran to the end.
        """
        if self.signum is not None:
            self.raised = True
            raise Interrupted(self.signum)


@contextlib.contextmanager
def handle_signals(*, deferred: bool) -> Iterator[StopFlag]:
    """Handle SIGINT and SIGTERM alike inside the block (main thread only; elsewhere a no-op)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if flag.raised:
            return  # cleaning up after the stop: let it finish
        if deferred and flag.signum is None:
            flag.signum = signum
            return
        flag.signum, flag.raised = signum, True
        raise Interrupted(signum)

    saved = {s: signal.signal(s, handler) for s in HANDLED}
    try:
        yield flag
    finally:
        for s, previous in saved.items():
            signal.signal(s, previous)
