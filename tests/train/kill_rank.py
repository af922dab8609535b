"""``heedful`` as torchrun starts it, except that the process of rank KILL_RANK (default 1) kills
itself with SIGKILL at its 5th ``Dist.agree`` (a step of its second epoch with the tiny dates
run): a process lost mid-training, for tests/train/test_distributed.py.

With TERM_FIRST=1 the other process, at its own 5th agree, waits for torchrun's SIGTERM (sent to
the survivors once torchrun sees the lost one) before it calls the collective that then fails: the
order a survivor still busy with its step meets, which otherwise comes about 1 run in 35."""

import os
import signal
import sys
import threading

from heedful.train import distributed

calls = {"n": 0}
agree = distributed.Dist.agree


term_seen = threading.Event()
_install = signal.signal


def install_noting_sigterm(signum, handler):
    """signal.signal, with every SIGTERM handler (the trainer's) noting first that one came: it
    may come before this process reaches its 5th agree (its step still running)."""
    if signum == signal.SIGTERM and callable(handler):
        inner = handler

        def handler(s, frame):
            term_seen.set()
            inner(s, frame)

    return _install(signum, handler)


signal.signal = install_noting_sigterm


def agree_then_die(self, *flags):
    calls["n"] += 1
    if calls["n"] == 5:
        if self.rank == int(os.environ.get("KILL_RANK", "1")):
            os.kill(os.getpid(), signal.SIGKILL)
        elif os.environ.get("TERM_FIRST") == "1":
            term_seen.wait(60)  # torchrun's SIGTERM, taken by the trainer's handler
    return agree(self, *flags)


distributed.Dist.agree = agree_then_die

if __name__ == "__main__":
    from heedful.cli import main

    sys.argv[0] = "heedful"
    main()
