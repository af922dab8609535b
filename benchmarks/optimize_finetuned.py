"""Head pruning and low-rank factorization after the same fine-tuning, against the run fine-tuned
alone: what the structure costs, apart from what the extra training adds.

    python benchmarks/optimize_finetuned.py RUN [--steps 300] [--n 1000] [--rounds 3] [--json F]
    python benchmarks/optimize_finetuned.py RUN --heads-sweep --plots docs   # + 25 % and 75 % of heads, and the plot

`heedful optimize`'s fine-tuning (``optimize.common.fine_tune``: Adam, lr ``--lr``, the run's
precision, its first training batches) repairs a pruned or factorized model. On a run that was
still improving when its training stopped, those steps also train it further, so the structural
rows are compared twice: with the run as trained (what `heedful optimize` gives a user) and
with the **control** — the same run after the same ``--steps`` fine-tuning steps with nothing
removed (what the structure alone costs).

Rows: fp32 as trained; the control; half of the attention heads removed in two rounds, each
followed by ``--steps / 2`` steps (Michel et al. 2019's iterative pruning); low-rank 75 % and 50 %
(each factorized Linear keeps that share of its parameters) with ``--steps`` steps. Quality: BLEU
and chrF of the first ``--n`` test sentences, beam 5, the run's α. Speed: those sentences in
batches of 100, ``--rounds`` rounds with every model in turn (the order rotating), median
sentences/s and its ratio to fp32 in the same run. Weights file sizes and parameter counts are exact.
``--heads-sweep`` adds 25 % and 75 % of the heads removed (the same two rounds and steps) and
draws BLEU against heads removed — 0 % being the control — as ``optimize_bleu_vs_heads.png`` in
``--plots``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from heedful.optimize import count_parameters, optimize
from heedful.optimize.common import fine_tune, write_run
from heedful.runs import load_run

sys.path.insert(0, str(Path(__file__).parent))
from optimize import decode_all, interleaved_rounds, quality, weights_size  # benchmarks/optimize.py, beside this file


def heads_row(fraction: float, steps: int) -> str:
    return f"heads −{fraction:.0%}, 2 rounds × {steps // 2} steps"


def plot_heads(rows: dict, names: list[str], steps: int, key: str, out: Path) -> None:
    """BLEU against the share of heads removed: 0 % is the control (fine-tuned alike, nothing removed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [0, 25, 50, 75]
    ys = [rows[names[1]][key]] + [rows[heads_row(f, steps)][key] for f in (0.25, 0.5, 0.75)]
    fig, ax = plt.subplots(figsize=(5, 3.4), dpi=120)
    ax.plot(xs, ys, "o-", label=f"pruned in 2 rounds, {steps} fine-tuning steps in all")
    ax.axhline(rows[names[0]][key], color="grey", ls="--", lw=1, label="as trained (no fine-tuning)")
    ax.set_xlabel("attention heads removed (%)")
    ax.set_ylabel(f"test {key.upper()} (beam 5)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    print(f"written: {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--work", type=Path, default=None, help="where the optimized runs go (default RUN-finetuned)")
    parser.add_argument("--steps", type=int, default=300, help="fine-tuning steps of every optimized row")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--heads-sweep", action="store_true", help="also 25 %% and 75 %% of heads removed, and a plot")
    parser.add_argument("--plots", type=Path, default=Path("docs"), help="where --heads-sweep draws its figure")
    parser.add_argument("--reuse", action="store_true", help="keep optimized runs already in --work (same options)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = args.work or args.run.with_name(args.run.name + "-finetuned")
    work.mkdir(parents=True, exist_ok=True)

    run = load_run(args.run, "cpu", overrides=["train.progress=false"])
    made: dict[str, Path] = {}
    timings: dict[str, float] = {}
    control_dir = work / "control"
    started = time.perf_counter()
    if not (args.reuse and (control_dir / "optimize.json").is_file()):
        control = copy.deepcopy(run.model)
        fine_tune(run, control, args.steps, args.lr)
        write_run(run, control.eval(), control_dir, {"method": "fine-tune only", "fine_tune_steps": args.steps,
                                                     "lr": args.lr})  # fmt: skip
    made[f"fp32 + {args.steps} steps (control)"] = control_dir
    timings["control"] = time.perf_counter() - started
    fractions = (0.25, 0.5, 0.75) if args.heads_sweep else (0.5,)
    variants = {
        heads_row(f, args.steps): ("prune-heads", {"fraction": f, "rounds": 2, "fine_tune_steps": args.steps // 2})
        for f in fractions
    } | {
        f"low-rank 75% + {args.steps} steps": ("low-rank", {"size": 0.75, "fine_tune_steps": args.steps}),
        f"low-rank 50% + {args.steps} steps": ("low-rank", {"size": 0.5, "fine_tune_steps": args.steps}),
    }
    for name, (method, options) in variants.items():
        folder = work / (method + "-" + "-".join(f"{k}{v}" for k, v in options.items()))
        made[name] = folder
        if args.reuse and (folder / "optimize.json").is_file():
            print(f"{name}: reused {folder}", flush=True)
            continue
        started = time.perf_counter()
        source = load_run(args.run, "cpu", overrides=["train.progress=false"])
        optimize(source, method, folder, lr=args.lr, **options)
        timings[name] = time.perf_counter() - started
        print(f"{name}: made in {timings[name]:.0f} s", flush=True)

    run.task.build_data(run.cfg)
    run.task.load_artifacts(run.run_dir / "model")
    examples = list(run.task.data.splits["test"])[: args.n]
    sources = [e.source for e in examples]
    models = {"fp32 (as trained)": (run.model, args.run)}
    models |= {name: (load_run(d, "cpu").model, d) for name, d in made.items()}
    alpha = run.cfg.decode.alpha
    names = list(models)
    load_start = os.getloadavg()
    decoders = {
        name: lambda lines, m=m: decode_all(m, run.task, lines, 5, 100, alpha) for name, (m, _) in models.items()
    }
    seconds, outputs = interleaved_rounds(decoders, sources, args.rounds)
    load_end = os.getloadavg()
    base_s, base_size = statistics.median(seconds[names[0]]), weights_size(args.run)
    base_params = count_parameters(run.model)
    rows = {}
    for name in names:
        model, directory = models[name]
        q = quality(run.task, outputs[name], examples)
        rows[name] = {"size": weights_size(directory), "params": count_parameters(model),
                      "sent_per_s": len(sources) / statistics.median(seconds[name]),
                      "speedup": base_s / statistics.median(seconds[name]), "seconds": seconds[name], **q}  # fmt: skip
    ref = {"as trained": rows[names[0]], "control": rows[names[1]]}
    key = "bleu" if "bleu" in ref["control"] else "exact_match"  # a dates run scores exact match
    print(f"\n{len(sources)} test sentences, beam 5, α {alpha}, {args.threads} threads; load {load_start} → {load_end}")
    print(f"| model | size MB | × | params | × | sent/s | speed-up | {key} | Δ as trained | Δ control | chrF |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for name, row in rows.items():
        print(f"| {name} | {row['size'] / 1e6:.2f} | {row['size'] / base_size:.2f} | {row['params']:,} | "
              f"{row['params'] / base_params:.2f} | {row['sent_per_s']:.1f} | {row['speedup']:.2f}× | "
              f"{row[key]:.2f} | {row[key] - ref['as trained'][key]:+.2f} | "
              f"{row[key] - ref['control'][key]:+.2f} | {row.get('chrf', '')} |")  # fmt: skip
    if args.heads_sweep:
        plot_heads(rows, names, args.steps, key, args.plots / "optimize_bleu_vs_heads.png")
    if args.json:
        args.json.write_text(json.dumps({"run": str(args.run), "steps": args.steps, "lr": args.lr, "n": len(sources),
                                         "load_average": [load_start, load_end], "made_seconds": timings,
                                         "rows": rows}, indent=1) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
