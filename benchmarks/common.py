"""What several benchmarks share: train a config once (or reuse the finished run), test it, and
print a Markdown table with a header naming the machine.

Benchmarks run as scripts (`python benchmarks/speech.py …`), so Python puts this folder on the
path and `from common import …` finds this file.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from heedful.config import RunConfig
from heedful.runs import Run, load_config, load_run
from heedful.train import History, fit


def header(overrides: list[str] = ()) -> str:
    """The line that starts every summary: when, on what, with how many threads — the runs' own
    ``train.num_threads`` when the overrides set it (the trainer applies it only once it starts),
    else torch's default."""
    threads = next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("train.num_threads=")), None)
    threads = threads or str(torch.get_num_threads())
    return (f"## {time.strftime('%Y-%m-%d %H:%M')} — {platform.machine()}, "
            f"{threads} threads, torch {torch.__version__}")  # fmt: skip


def fit_or_reuse(cfg: RunConfig, retrain: bool = False) -> float:
    """Train ``cfg`` into its run directory unless a finished run with the same config is there
    (and ``retrain`` is off); returns the training minutes (those the reused run recorded)."""
    run_dir = cfg.resolved_run_dir()
    # Only a run whose fit() returned counts: a run still training (or cut off) has a history too.
    finished = (run_dir / "history.json").is_file() and History.load(run_dir / "history.json").completed
    if finished and not retrain and load_config(run_dir / "config.yaml") == cfg:
        print(f"{run_dir.name}: reusing the finished run in {run_dir} (--retrain to train again)", flush=True)
        return History.load(run_dir / "history.json").epochs[-1]["time"] / 60
    started = time.perf_counter()
    fit(cfg, overwrite=True)
    return (time.perf_counter() - started) / 60


def train_and_test(run_dir: Path, config: str | Path, overrides: list[str], retrain: bool) -> dict:
    """Train ``config`` into ``run_dir`` (or reuse the finished run: ``fit_or_reuse``), then score
    its best checkpoint on the test split once.

    Returns one table row: run name, parameters, training minutes, epochs, best epoch and the
    test metrics (rounded to 4 places)."""
    cfg = load_config(config, [f"run_dir={run_dir}", "train.progress=false", *overrides])
    minutes = fit_or_reuse(cfg, retrain)
    history = History.load(run_dir / "history.json")
    metrics = load_run(run_dir, device=cfg.device).evaluate("test")
    params = sum(p.numel() for p in load_run(run_dir, device="cpu").model.parameters())
    row = {"run": run_dir.name, "params": params, "train_min": round(minutes, 2), "epochs": len(history.epochs),
           "best_epoch": history.best_epoch, **{k: round(v, 4) for k, v in metrics.items()}}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def faithfulness_args(description: str, kind: str, seed: int | None = None) -> tuple[argparse.Namespace, Run]:
    """The faithfulness benchmarks' command line (RUN_DIR, --n test ``kind`` scored, --draws
    random rankings), one torch thread, ``torch.manual_seed(seed)`` if given, and the run loaded
    on the CPU."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("run_dir")
    parser.add_argument("--n", type=int, default=300, help=f"test {kind} scored")
    parser.add_argument("--draws", type=int, default=5, help="random rankings")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if seed is not None:
        torch.manual_seed(seed)
    return args, load_run(args.run_dir, device="cpu")


def report_faithfulness(table: dict, run_dir: Path, examples: int, kind: str, units: str, draws: int,
                        seconds: float) -> None:  # fmt: skip
    """Print a ``faithfulness_table`` (comprehensiveness, ± its spread for random, sufficiency, the
    ratio to random) and keep it with the run as ``RUN_DIR/faithfulness.json``."""
    print(f"{examples} test {kind} of {run_dir}, ERASER AOPC over 1/5/10/20/50 % of {units} ({seconds:.0f} s)")
    print(f"{'method':<24}{'comprehensiveness':>20}{'sufficiency':>14}{'× random':>10}")
    for name, row in table.items():
        comp = f"{row['comprehensiveness']:.4f}" + (f" ± {row['comprehensiveness_sd']:.4f}" if name == "random" else "")
        ratio = f"{row['comp_vs_random']:.2f}" if "comp_vs_random" in row else ""
        print(f"{name:<24}{comp:>20}{row['sufficiency']:>14.4f}{ratio:>10}")
    record = {"methods": table, "examples": examples, "draws": draws, "seconds": round(seconds, 1),
              "machine": platform.machine(), "date": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
    (Path(run_dir) / "faithfulness.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
