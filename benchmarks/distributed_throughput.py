"""Two-process data-parallel training on the CPU against one process, same global batch.

    python benchmarks/distributed_throughput.py                 # dates task, ~2 minutes on 2 cores
    python benchmarks/distributed_throughput.py --rounds 3 --steps 60

Both runs train configs/dates.yaml (d_model 128, 2+2 layers) through ``heedful train`` for one
epoch of ``--steps`` optimizer steps of ``--batch`` examples each:

  one   ``python -m heedful train …`` — one process, 2 torch threads, batches of B
  one1  (with ``--one-thread``) the same on 1 thread: how much the second thread brings here
  two   ``torchrun --standalone --nproc-per-node 2 -m heedful train …`` — two processes (gloo),
        1 thread each (OMP_NUM_THREADS=1), batches of B/2 per process, so every optimizer step
        again sees B examples (DDP averages the two halves' gradients)

Throughput is examples per second of training time: the history's ``time`` at the epoch's end
(the trainer's clock, started with the loop: process start-up, data building and validation are
left out) for steps × B examples. The two runs alternate ``--rounds`` times (one, two, one, two…)
so a change in machine load hits both; the script prints every round, the medians and the ratio
two/one of the medians. On a machine shared with other work the figures swing: say so beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def train(run_dir: Path, processes: int, batch: int, steps: int, threads: int) -> float:
    """Train one epoch; the trainer's seconds for it."""
    overrides = {
        "train.epochs": 1,
        "train.steps_per_epoch": steps * processes,  # batches per epoch: each step takes one per process
        "train.batch_size": batch // processes,
        "train.num_threads": threads,
        "train.max_minutes": "null",
        "train.progress": "false",
        "train.tensorboard": "false",
        "data.val_size": 64,
        "data.test_size": 64,
        "model.dropout": 0.0,
    }
    args = ["train", "configs/dates.yaml", "--device", "cpu", "--run-dir", str(run_dir)]
    args += [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT / "src")}
    if processes == 1:
        command = [sys.executable, "-m", "heedful", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
        command += ["-m", "heedful", *args]
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    history = json.loads((run_dir / "history.json").read_text())
    return history["epochs"][-1]["time"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per run")
    parser.add_argument("--batch", type=int, default=128, help="global batch (examples per optimizer step)")
    parser.add_argument("--one-thread", action="store_true", help="also one process on one thread")
    args = parser.parse_args()
    arms = [("one", 1, 2), ("two", 2, 1)] + ([("one1", 1, 1)] if args.one_thread else [])
    rates: dict[str, list[float]] = {name: [] for name, _, _ in arms}
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, processes, threads in arms:
                seconds = train(Path(tmp) / f"{name}-{r}", processes, args.batch, args.steps, threads)
                rates[name].append(args.steps * args.batch / seconds)
                print(f"round {r + 1}  {name}: {seconds:6.1f} s  {rates[name][-1]:7.1f} examples/s", flush=True)
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.one_thread:
        print(f"median examples/s: one process × 1 thread {statistics.median(rates['one1']):.1f}")
    one, two = statistics.median(rates["one"]), statistics.median(rates["two"])
    print(f"median examples/s: one process × 2 threads {one:.1f}, two processes × 1 thread (gloo) {two:.1f}")
    print(f"ratio two/one: {two / one:.2f}")


if __name__ == "__main__":
    main()
