"""Does self-attention help the GAN? The SAGAN ablation docs/RESULTS.md reports.

    python benchmarks/gan_ablation.py                         # MNIST 32×32, 3 seeds × 3 settings
    python benchmarks/gan_ablation.py --epochs 5 --seeds 0 1 2
    python benchmarks/gan_ablation.py --config configs/digits_gan.yaml --placements none 4

Every setting trains `configs/mnist_gan.yaml` (class-conditional, spectral norm, hinge loss, TTUR,
weight-averaged generator) with the same seeds and the same number of optimizer steps
(`--epochs`, not minutes: a step budget is unaffected by what else the machine is doing, and the
attention's own cost shows up in the wall-time column instead). The settings differ only in
`model.attention_resolution`: no block, or the block on the 8×8 or on the 16×16 feature maps (of
generator and discriminator both, as in the paper).

Each run is scored by the domain FID of its best epoch (the trainer keeps the epoch with the lowest
FID against the held-out real images, so the figure is the best the run reached; every setting is
selected the same way) and the held-out classifier's recognition rate of the requested class.
Printed: one row per run, then mean ± sample std over seeds per setting; appended to
runs/bench-gan/summary.md. Finished runs with the same config are reused (--retrain to train anew).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import header, table, train_and_test

ROOT = Path("runs/bench-gan")


def mean_std(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {spread:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description="SAGAN ablation: with and without self-attention")
    parser.add_argument("--config", default="configs/mnist_gan.yaml")
    parser.add_argument("--placements", nargs="+", default=["none", "8", "16"],
                        help="attention feature-map sides to compare; 'none' = no block")  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=5, help="the step budget every run gets")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--retrain", action="store_true", help="train even where a finished run exists")
    args = parser.parse_args()
    ROOT.mkdir(parents=True, exist_ok=True)

    rows: list[dict] = []
    for seed in args.seeds:  # seed-major: a cut-off run still leaves every setting with some seeds
        for placement in args.placements:
            resolution = "null" if placement == "none" else placement
            overrides = [f"seed={seed}", f"train.epochs={args.epochs}", "train.max_minutes=null",
                         f"model.attention_resolution={resolution}", *args.overrides]  # fmt: skip
            row = train_and_test(ROOT / f"attn-{placement}-seed{seed}", args.config, overrides, args.retrain)
            rows.append({"attention": placement, "seed": seed, **row})

    summary = []
    for placement in args.placements:
        mine = [r for r in rows if r["attention"] == placement]
        summary.append({
            "attention": "none" if placement == "none" else f"{placement}×{placement}",
            "params": mine[0]["params"],
            "train_min": mean_std([r["train_min"] for r in mine]),
            "fid": mean_std([r["fid"] for r in mine]),
            "class_accuracy": mean_std([100 * r["class_accuracy"] for r in mine]),
            "seeds": len(mine),
        })  # fmt: skip
    print(json.dumps(summary), flush=True)
    report = "\n\n".join([
        f"{header(args.overrides)} — {args.config}, {args.epochs} epochs per run",
        table(rows, ["attention", "seed", "params", "train_min", "best_epoch", "fid", "class_accuracy",
                     "classifier_accuracy"]),
        table(summary, ["attention", "params", "train_min", "fid", "class_accuracy", "seeds"]),
    ]) + "\n"  # fmt: skip
    print("\n" + report)
    with open(ROOT / "summary.md", "a") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    main()
