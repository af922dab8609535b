"""Stopping a training cleanly: Ctrl-C (SIGINT) or SIGTERM (``timeout``, ``docker stop``, SLURM,
systemd) asks the trainer to stop after the step it is in, save a checkpoint there and exit, so
nothing trained is lost and ``heedful train RUN --resume`` continues bit-identically. A second
Ctrl-C stops at once (what a checkpoint already holds is kept); a second SIGTERM kills.

A KeyboardInterrupt raised anywhere inside a step could leave the optimizer half-stepped, so the
signal only sets a flag; the training loop looks at it where a step ends (all ranks together,
under torchrun).
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class TrainingStopped(KeyboardInterrupt):
    """Training stopped at a step's end on a signal, its checkpoint saved (``signum``: which)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopRequest:
    """Which signal asked the training to stop (None: none yet)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_on_signals(announce: bool = True) -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set the returned request instead of interrupting
    (main thread only: elsewhere Python delivers no signals, and the block changes nothing)."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def asked(signum: int, _frame: object) -> None:
        if request:  # the second time: as if no handler were there
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        request.signum = signum
        if announce:
            print(
                f"\nheedful: {signal.Signals(signum).name}: stopping after this step to save a checkpoint "
                "(Ctrl-C again stops at once)",
                file=sys.stderr,
                flush=True,
            )

    for s in previous:
        signal.signal(s, asked)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


class SigtermHold:
    """SIGTERM ignored from :meth:`hold` until :meth:`release` (main thread only; elsewhere both do
    nothing). torchrun terminates the other processes of a job as soon as it sees one gone; a
    survivor that has just met the loss in a collective call is ending anyway, and a SIGTERM then,
    before it has said why (the checkpoint to resume from), ended it without a word.

    :meth:`keep` makes the next release do nothing: the error is said after ``fit`` has raised it
    (by the CLI, or the caller), and a SIGTERM let through in between cut the line short."""

    def __init__(self) -> None:
        self._before: Any = None
        self._held = False
        self._kept = False

    def keep(self) -> None:
        self._kept = True

    def hold(self) -> None:
        if self._held or threading.current_thread() is not threading.main_thread():
            return
        self._before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._held = True

    def release(self) -> None:
        if self._held and not self._kept:
            signal.signal(signal.SIGTERM, self._before)
            self._held = False
