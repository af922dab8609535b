"""``heedful`` as torchrun starts it, except that the process of rank KILL_RANK (default 1) kills
itself with SIGKILL at its 5th ``Dist.agree`` (a step of its second epoch with the tiny dates
run): a process lost mid-training, for tests/train/test_distributed.py."""

import os
import signal
import sys

from heedful.train import distributed

calls = {"n": 0}
agree = distributed.Dist.agree


def agree_then_die(self, *flags):
    calls["n"] += 1
    if self.rank == int(os.environ.get("KILL_RANK", "1")) and calls["n"] == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return agree(self, *flags)


distributed.Dist.agree = agree_then_die

if __name__ == "__main__":
    from heedful.cli import main

    sys.argv[0] = "heedful"
    main()
