"""``heedful`` as torchrun starts it, except that the processes other than rank 0 ignore SIGTERM.
When one process fails, torchrun stops the others with SIGTERM, often before their waiting
collective call has failed; deaf to it, they always get to that failure (as a process on a
slower or farther machine would), for tests/train/test_distributed.py."""

import os
import signal
import sys

if __name__ == "__main__":
    from heedful.cli import main

    if os.environ.get("RANK", "0") != "0":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.argv[0] = "heedful"
    main()
