"""Speech benchmarks on the Free Spoken Digit Dataset — the figures docs/RESULTS.md reports.

    python benchmarks/speech.py digits      # standard split, CNN + self-attention (≥ 98.5 % target)
    python benchmarks/speech.py ablation    # same front end: attention vs BiGRU (equal size) vs CNN only
    python benchmarks/speech.py noise       # the `digits` model on test audio with white noise, SNR 20/10/5 dB
    python benchmarks/speech.py speakers    # leave-one-speaker-out, 6 folds
    python benchmarks/speech.py strings     # 2–7 digit strings, CTC, digit error rate
    python benchmarks/speech.py warps       # the `speakers` models on their held-out speaker, spectrum warped
    python benchmarks/speech.py all

Each run trains with `configs/speech_*.yaml` through the same API as `heedful train`, selects
on the validation split, then scores the test split once. Runs go to runs/bench-speech/<name>/
(their checkpoints and history are there); a summary table is printed and appended to
runs/bench-speech/summary.md. A finished run with the same config is tested again rather than
retrained (pass --retrain to train it anew), so `ablation` reuses the `digits` model and a
cut-off benchmark resumes where it stopped. `--set key=value` overrides apply to every run;
`speakers --run-prefix NAME` trains a variant's folds into runs/bench-speech/NAME-<speaker>.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from common import header, table
from common import train_and_test as _train_and_test
from heedful.data.audio import read_audio
from heedful.runs import load_run

ROOT = Path("runs/bench-speech")
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")


def train_and_test(name: str, config: str, overrides: list[str], retrain: bool) -> dict:
    return _train_and_test(ROOT / name, config, overrides, retrain)


def noisy_test(run_dir: Path, snr_db: float | None) -> float:
    run = load_run(run_dir, device="cpu")
    run.cfg.data.test_noise_snr_db = snr_db
    run.task.data = None  # rebuild the test audio with noise added
    return run.evaluate("test")["accuracy"]


WARPS = (0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2)


def warped_test(run_dir: Path) -> dict:
    """Is a held-out speaker's gap a vocal-tract-length mismatch? Score the test clips with the
    spectrum stretched by each factor in WARPS (the VTLP map, at test time): accuracy per warp,
    the warp the model is most confident at (test-time VTLN, no labels used), and the average of
    all warps' probabilities."""
    run = load_run(run_dir, device="cpu")
    task, model = run.task, run.model.eval()
    _, _, test = task._splits()  # the held-out speaker's recordings; no training features built
    waves = [read_audio(r.path, run.cfg.data.sample_rate) for r in test]
    labels = torch.tensor([r.digit for r in test])
    probs = {}
    with torch.no_grad():
        for warp in WARPS:
            parts = []
            for i in range(0, len(waves), 64):
                batch = task.pad([task.features(wave, warp) for wave in waves[i : i + 64]])
                logits, _ = model(batch["features"], batch["lengths"])
                parts.append(logits.softmax(-1))
            probs[warp] = torch.cat(parts)  # (N, 10)
    accuracy = {w: float((p.argmax(-1) == labels).float().mean()) for w, p in probs.items()}
    confident = max(WARPS, key=lambda w: float(probs[w].max(-1).values.mean()))
    averaged = torch.stack(list(probs.values())).mean(0)
    row = {"run": run_dir.name, **{f"warp {w}": round(a, 3) for w, a in accuracy.items()},
           "vtln": f"{accuracy[confident]:.3f} (warp {confident})",
           "averaged": round(float((averaged.argmax(-1) == labels).float().mean()), 3)}  # fmt: skip
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description="FSDD speech benchmarks")
    parser.add_argument("which", choices=["digits", "ablation", "noise", "speakers", "strings", "warps", "all"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--retrain", action="store_true", help="train even where a finished run exists")
    parser.add_argument("--run-prefix", default="speaker",
                        help="speakers / warps: the folds' run directories are <prefix>-<speaker> (a variant's "
                             "own prefix keeps the default runs)")  # fmt: skip
    args = parser.parse_args()
    chosen = {"digits", "ablation", "noise", "speakers", "strings", "warps"} if args.which == "all" else {args.which}
    ROOT.mkdir(parents=True, exist_ok=True)
    out: list[str] = [header(args.overrides)]
    digits = "configs/speech_digits.yaml"

    if chosen & {"digits", "ablation", "noise"}:
        rows = [train_and_test("digits-attention", digits, args.overrides, args.retrain)]
        if "ablation" in chosen:
            for encoder in ("bigru", "none"):
                rows.append(
                    train_and_test(
                        f"digits-{encoder}", digits, [*args.overrides, f"model.encoder={encoder}"], args.retrain
                    )
                )
        out.append(table(rows, ["run", "params", "train_min", "epochs", "best_epoch", "accuracy"]))
    if "noise" in chosen:
        rows = []
        for snr in (None, 20.0, 10.0, 5.0):
            accuracy = noisy_test(ROOT / "digits-attention", snr)
            rows.append({"snr_db": "clean" if snr is None else snr, "accuracy": round(accuracy, 4)})
        print(json.dumps(rows), flush=True)
        out.append(table(rows, ["snr_db", "accuracy"]))
    if "speakers" in chosen:
        rows = [
            train_and_test(f"{args.run_prefix}-{s}", digits, [*args.overrides, f"data.split=speaker:{s}"], args.retrain)
            for s in SPEAKERS
        ]
        mean = sum(r["accuracy"] for r in rows) / len(rows)
        rows.append({"run": "mean", "accuracy": round(mean, 4)})
        out.append(table(rows, ["run", "train_min", "epochs", "accuracy"]))
    if "strings" in chosen:
        row = train_and_test("strings-ctc", "configs/speech_strings.yaml", args.overrides, args.retrain)
        beam = load_run(ROOT / "strings-ctc", device="cpu")
        beam.cfg.decode.beam_size = 8
        row_beam = {"run": "strings-ctc (beam 8)", **{k: round(v, 4) for k, v in beam.evaluate("test").items()}}
        out.append(table([row, row_beam], ["run", "params", "train_min", "epochs", "der", "accuracy"]))
    if "warps" in chosen:
        runs = [
            ROOT / f"{args.run_prefix}-{s}" for s in SPEAKERS if (ROOT / f"{args.run_prefix}-{s}" / "model").is_dir()
        ]
        if not runs:
            raise SystemExit(f"no speaker runs in {ROOT}: run `benchmarks/speech.py speakers` first")
        rows = [warped_test(run_dir) for run_dir in runs]
        out.append(table(rows, list(rows[0])))

    report = "\n\n".join(out) + "\n"
    print("\n" + report)
    with open(ROOT / "summary.md", "a") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    main()
