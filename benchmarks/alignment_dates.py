"""Alignments from the dates model's cross-attention against gold by construction (field level).

    python benchmarks/alignment_dates.py runs/dates [--json docs/alignment_dates.json]

Each ISO field (year, month, day) of a date's target should link to the source characters
Babel wrote it from; characters are merged into those fields (the rest of the source —
separators, weekday — is its own unit or none) and the links are scored with AER, precision
and recall (Och & Ney 2003). Every method (layers, heads, shifted rows, direction) is scored
on the validation dates; the one with the lowest validation AER is reported on the test dates,
so the choice is not fit on the figure reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from heedful.explain.alignment import AlignMethod, date_alignment_scores
from heedful.runs import load_run


def methods(n_layers: int, n_heads: int) -> dict[str, AlignMethod]:
    out = {}
    for shift in (False, True):
        for direction in ("target", "intersection", "grow-diag-final"):
            for layers in [None, *[(i,) for i in range(n_layers)]]:
                m = AlignMethod(layers=layers, shift=shift, direction=direction)
                out[m.describe()] = m
        for layer in range(n_layers):
            for head in range(n_heads):
                m = AlignMethod(layers=(layer,), heads=(head,), shift=shift, direction="target")
                out[m.describe()] = m
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    run = load_run(args.run_dir, device="cpu")
    task = run.task
    task.build_data(run.cfg)
    task.load_artifacts(args.run_dir / "model")
    cfg = run.model.config
    candidates = methods(cfg.n_decoder_layers, cfg.n_heads)
    start = time.perf_counter()
    val = date_alignment_scores(run.model, task.src_tok, task.tgt_tok, task.data.splits["val"], candidates)
    best = min(val, key=lambda name: val[name]["aer"])
    chosen = {
        best: candidates[best],
        "all layers, all heads, argmax, target": candidates["all layers, all heads, argmax, target"],
    }
    test = date_alignment_scores(run.model, task.src_tok, task.tgt_tok, task.data.splits["test"], chosen)
    seconds = time.perf_counter() - start
    print(f"{len(candidates)} methods scored on {len(task.data.splits['val'])} validation dates; best: {best}")
    for name in sorted(val, key=lambda n: val[n]["aer"])[:10]:
        print(f"  val AER {val[name]['aer']:.4f}  P {val[name]['precision']:.4f}  R {val[name]['recall']:.4f}  {name}")
    for name, s in test.items():
        n = len(task.data.splits["test"])
        print(f"test ({n} dates) AER {s['aer']:.4f}  P {s['precision']:.4f}  R {s['recall']:.4f}  {name}")
    if args.json:
        record = {"run": str(args.run_dir), "best_on_val": best, "val": val, "test": test,
                  "seconds": round(seconds, 1), "machine": platform.machine(),
                  "date": datetime.now(UTC).isoformat(timespec="seconds")}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
