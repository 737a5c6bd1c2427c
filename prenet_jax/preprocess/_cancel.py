"""Stopping a run cleanly on SIGINT (Ctrl-C) or SIGTERM (``kill``, batch schedulers).

The signal is handled in one place: :meth:`Cancel.handler` only records the signal
and sets an event. Every loop of a run (pass 0's reads, the reader, compute and
writer loops of pass 1, the checksum thread) checks the event, and
:meth:`Cancel.check` raises :class:`Interrupted` in the main thread, which unwinds
to the one ``finally`` that removes everything the run created.

Why not let Python raise ``KeyboardInterrupt``: Python raises it wherever the main
thread happens to be, e.g. inside a JAX garbage-collection callback, which prints
"Exception ignored in ... _xla_gc_callback" and swallows it, or between creating a
file and registering it for clean-up.

Test hook
---------
``PRENET_TEST_HOLD=<phase>`` holds the run at that phase (see :data:`PHASES`): the
run writes one byte to the file descriptor ``PRENET_TEST_HOLD_FD`` (if set), sends
itself ``PRENET_TEST_HOLD_SIGNAL`` (``INT`` or ``TERM``, if set), and waits until a
signal arrives (at most ``PRENET_TEST_HOLD_TIMEOUT`` seconds, default 120). Tests
use it to deliver a signal at a known moment instead of racing a sleep.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

__all__ = ["Cancel", "Interrupted", "PHASES", "catch_signals"]

#: The phases of a run, in order, and how the interruption message names them.
PHASES = {
    "startup": "start-up",
    "pass0": "pass 0 (estimating the ellipse)",
    "centers": "the centres pass (--descan)",
    "compile": "compilation of the step",
    "stream": "streaming (pass 1)",
    "finish": "the writing of the metadata and figures",
    "close": "the closing of the output file",
}

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """The run was stopped by a signal. A ``BaseException``, like ``KeyboardInterrupt``,
    so that no ``except Exception`` on the way swallows it.

    Attributes
    ----------
    signum : the signal received
    phase : key of :data:`PHASES` where the run was
    exit_code : ``128 + signum`` (130 for SIGINT, 143 for SIGTERM), as a shell reports it
    """

    def __init__(self, signum: int, phase: str):
        self.signum = int(signum)
        self.phase = phase
        super().__init__(self.message())

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        return f"interrupted by {name} during {PHASES.get(self.phase, self.phase)}"


class Cancel:
    """The stop flag of a run, set by a signal (or by :meth:`set`).

    Attributes
    ----------
    event : ``threading.Event`` the worker loops poll
    signum : the signal that set it, or None
    phase : key of :data:`PHASES` the run is in (for the message)
    """

    def __init__(self):
        self.event = threading.Event()
        self.signum: int | None = None
        self.phase = "startup"
        self._held: set[str] = set()

    def handler(self, signum, frame) -> None:
        """The signal handler: record, never raise (see the module docstring)."""
        if self.signum is None:
            self.signum = signum
        self.event.set()

    def set(self, signum: int = signal.SIGINT) -> None:
        self.handler(signum, None)

    def is_set(self) -> bool:
        return self.event.is_set()

    def check(self) -> None:
        """Raise :class:`Interrupted` if a signal has arrived."""
        if self.event.is_set():
            raise Interrupted(self.signum or signal.SIGINT, self.phase)

    def enter(self, phase: str) -> None:
        """Mark the start of ``phase``: the test hook may hold here; then check."""
        self.phase = phase
        self.hold(phase)
        self.check()

    def hold(self, phase: str) -> None:
        """The test hook (module docstring). Holds at most once per phase; a no-op
        unless ``PRENET_TEST_HOLD`` names ``phase``. Does not check: the caller does,
        where a signal arriving at that moment would be noticed."""
        if os.environ.get("PRENET_TEST_HOLD") != phase or phase in self._held:
            return
        self._held.add(phase)
        fd = os.environ.get("PRENET_TEST_HOLD_FD")
        if fd:
            os.write(int(fd), phase.encode() + b"\n")
        sig = os.environ.get("PRENET_TEST_HOLD_SIGNAL")
        if sig:
            os.kill(os.getpid(), getattr(signal, "SIG" + sig.upper().removeprefix("SIG")))
        self.event.wait(float(os.environ.get("PRENET_TEST_HOLD_TIMEOUT", "120")))


@contextlib.contextmanager
def catch_signals(cancel: Cancel) -> Iterator[bool]:
    """Route SIGINT and SIGTERM to ``cancel`` for the duration of the block.

    Only the main thread can install handlers; elsewhere (a run started from a
    worker thread) nothing changes and the block gets ``False``. A signal that was
    ignored before (``SIG_IGN``, e.g. SIGINT of a background job) stays ignored.
    The previous handlers are restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    old = {}
    try:
        for s in _SIGNALS:
            prev = signal.getsignal(s)
            if prev is signal.SIG_IGN:
                continue
            old[s] = prev
            signal.signal(s, cancel.handler)
        yield True
    finally:
        for s, prev in old.items():
            signal.signal(s, prev if prev is not None else signal.SIG_DFL)


def redeliver(exc: Interrupted) -> None:
    """After clean-up, hand a signal caught by a library call back to the handler the
    caller had (restored by :func:`catch_signals`): SIGINT then raises
    ``KeyboardInterrupt`` here, at a known place; SIGTERM ends the process with
    status 143 unless the caller handles it."""
    signal.raise_signal(exc.signum)
