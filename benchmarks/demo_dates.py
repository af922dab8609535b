"""Checks the promise of `make demo`: the dates task reaches ≥ 97 % exact match on its fixed test
set within 5 minutes of training on this machine (set-up excluded).

    python benchmarks/demo_dates.py [--run-dir runs/bench-dates] [--set key=value ...]

Runs the same three commands as `make demo` (train, evaluate, predict) in-process through the
Python API, times training and evaluation separately, and prints one PASS/FAIL line.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time

import torch

from heedful.runs import load_config, load_run
from heedful.train import fit

TARGET_EXACT_MATCH = 0.97
BUDGET_MINUTES = 5.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/dates.yaml")
    parser.add_argument("--run-dir", default="runs/bench-dates")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    cfg = load_config(args.config, [f"run_dir={args.run_dir}", "train.progress=false", *args.overrides])
    started = time.perf_counter()
    history = fit(cfg, overwrite=True)
    train_minutes = (time.perf_counter() - started) / 60

    started = time.perf_counter()
    run = load_run(args.run_dir, device=cfg.device)
    metrics = run.evaluate("test")
    eval_seconds = time.perf_counter() - started
    examples = run.predict(["5. März 2021", "March 5, 2021", "2021年3月5日"])

    print()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"epochs run: {len(history.epochs)} (best {history.best_epoch}), optimizer steps: {history['step'][-1]}")
    print(f"training wall time: {train_minutes:.2f} min (budget {BUDGET_MINUTES} min, set-up excluded)")
    print(f"test evaluation: {eval_seconds:.1f} s on {cfg.data.test_size} examples")
    for key, value in metrics.items():
        print(f"test {key}: {value:.4f}")
    for p in examples:
        print(f"  {p.input}  →  {p.output}")
    ok = metrics["exact_match"] >= TARGET_EXACT_MATCH and train_minutes <= BUDGET_MINUTES
    print(
        f"{'PASS' if ok else 'FAIL'}: exact match {metrics['exact_match']:.4f} (target ≥ {TARGET_EXACT_MATCH}) "
        f"in {train_minutes:.2f} min (budget ≤ {BUDGET_MINUTES})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
