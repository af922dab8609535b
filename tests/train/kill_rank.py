"""``heedful`` as torchrun starts it, except that the process of rank KILL_RANK (default 1) kills
itself with SIGKILL at its 5th ``Dist.agree`` (a step of its second epoch with the tiny dates
run): a process lost mid-training, for tests/train/test_distributed.py.

With TERM_FIRST=1 the other process, at its own 5th agree, waits for torchrun's SIGTERM (sent to
the survivors once torchrun sees the lost one) before it calls the collective that then fails: the
order a survivor still busy with its step meets, which otherwise comes about 1 run in 35."""

import os
import signal
import sys
import time

from heedful.train import distributed

calls = {"n": 0}
agree = distributed.Dist.agree


def wait_for_sigterm(seconds: float = 60.0) -> None:
    """Let the handler in place (the trainer's) take torchrun's SIGTERM, then go on."""
    handler, seen = signal.getsignal(signal.SIGTERM), []

    def noted(signum, frame):
        seen.append(signum)
        if callable(handler):
            handler(signum, frame)

    signal.signal(signal.SIGTERM, noted)
    deadline = time.monotonic() + seconds
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    signal.signal(signal.SIGTERM, handler)


def agree_then_die(self, *flags):
    calls["n"] += 1
    if calls["n"] == 5:
        if self.rank == int(os.environ.get("KILL_RANK", "1")):
            os.kill(os.getpid(), signal.SIGKILL)
        elif os.environ.get("TERM_FIRST") == "1":
            wait_for_sigterm()
    return agree(self, *flags)


distributed.Dist.agree = agree_then_die

if __name__ == "__main__":
    from heedful.cli import main

    sys.argv[0] = "heedful"
    main()
