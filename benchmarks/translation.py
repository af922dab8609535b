"""Multi30k English→German: the Transformer against the RNN baselines — the table and the
learning-curve plot docs/RESULTS.md reports.

    python benchmarks/translation.py                       # all four models, each at its config's budget
    python benchmarks/translation.py --models transformer rnn_bahdanau
    python benchmarks/translation.py --set train.max_minutes=20   # one budget for every model
    python benchmarks/translation.py --report-only         # table and plot from finished runs, no training
                                                           # (whatever settings they were trained with: named)

The four models are configs/multi30k/{transformer,rnn_none,rnn_bahdanau,rnn_luong}.yaml: the same
data, joint 8k sentencepiece vocabulary, trainer and decoding; the RNNs are GRU encoder–decoders
without attention, with Bahdanau (additive) and with Luong (general) attention. Each trains through
the same API as `heedful train` into its config's run directory (runs/<name>), choosing its best
epoch by greedy BLEU on `val` (the test set is never looked at during training); then the best
model is scored once on test2016, greedy and beam 5 (sacreBLEU, detokenized, cased; the beam-5
hypotheses and scores stay in the run directory). A run that already finished with the same config
is scored again rather than retrained (--retrain trains anew), so `heedful train` runs count too.

Columns: parameters; training wall time (per-epoch validation included: it is part of the budget);
target tokens/s over that time (training target tokens, <eos> included, padding not); the epochs
done and the best one; test BLEU and chrF, greedy and beam 5. The plot (docs/translation_curves.png
unless --plot says otherwise) shows val BLEU (greedy) against training wall time for every model.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from heedful.runs import load_config, load_run
from heedful.train import History, fit
from heedful.train.rundir import record_written

CONFIGS = Path("configs/multi30k")
MODELS = ("transformer", "rnn_none", "rnn_bahdanau", "rnn_luong")
LABELS = {
    "transformer": "Transformer 3+3×256",
    "rnn_none": "GRU, no attention",
    "rnn_bahdanau": "GRU + Bahdanau",
    "rnn_luong": "GRU + Luong (general)",
}


def _differences(ran, wanted) -> str:
    """The settings of a finished run that differ from the config asked for ("" when none), apart
    from how the run was watched (progress bars), which does not change training."""

    def flat(dump: dict, prefix: str = "") -> dict:
        out = {}
        for key, value in dump.items():
            if isinstance(value, dict):
                out |= flat(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = value
        return out

    a, b = flat(ran.model_dump(mode="json")), flat(wanted.model_dump(mode="json"))
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k != "train.progress")
    return ", ".join(f"{k}={a.get(k)}" for k in keys)


def train(name: str, overrides: list[str], retrain: bool, train_missing: bool) -> Path | None:
    cfg = load_config(CONFIGS / f"{name}.yaml", ["train.progress=false", *overrides])
    run_dir = cfg.resolved_run_dir()
    history_file = run_dir / "history.json"
    # Only a run whose fit() returned counts: a run still training (or cut off) has a history too.
    finished = history_file.is_file() and History.load(history_file).completed
    if finished and not retrain:
        differences = _differences(load_config(run_dir / "config.yaml"), cfg)
        if not differences:
            print(f"{name}: reusing the finished run in {run_dir} (--retrain to train again)", flush=True)
            return run_dir
        if not train_missing:  # --report-only reports what was run, and says how it differs
            print(f"{name}: reporting the finished run in {run_dir}, trained with {differences}", flush=True)
            return run_dir
    if not train_missing:
        print(f"{name}: no finished run with this config in {run_dir}; skipped (--report-only)", flush=True)
        return None
    print(f"{name}: training into {run_dir}", flush=True)
    fit(cfg, overwrite=True)
    return run_dir


def target_tokens_per_epoch(run_dir: Path) -> int:
    """Training target tokens per epoch (<eos> included), from the run's own data and tokenizer."""
    run = load_run(run_dir, device="cpu")
    source = run.task.build_data(run.cfg).train
    return sum(int((b["tgt_out"] != run.task.tgt_tok.pad_id).sum()) for b in source.batches(0))


def score(name: str, run_dir: Path) -> dict:
    """The table row of a finished run; kept in run_dir/bench-translation.json, and reused while
    the model is unchanged (scoring decodes the test set twice)."""
    saved = run_dir / "bench-translation.json"
    weights = run_dir / "model" / "model.safetensors"
    if saved.is_file() and saved.stat().st_mtime > weights.stat().st_mtime:
        row = json.loads(saved.read_text())
        print(f"{name}: scores of {run_dir} reused from {saved}", flush=True)
        return row
    row = _score(name, run_dir)
    saved.write_text(json.dumps(row, indent=2, ensure_ascii=False) + "\n")
    record_written(run_dir, saved)  # heedful's: --overwrite clears it
    return row


def _score(name: str, run_dir: Path) -> dict:
    history = History.load(run_dir / "history.json")
    last = history.epochs[-1]
    row: dict = {"model": LABELS.get(name, name), "run": str(run_dir)}
    run = load_run(run_dir, device="cpu")
    row["params"] = sum(p.numel() for p in run.model.parameters())
    row["train_min"] = round(last["time"] / 60, 1)
    steps_per_epoch = history.epochs[0]["step"]  # the first epoch always completes
    tokens = target_tokens_per_epoch(run_dir) * last["step"] / steps_per_epoch
    row["tok_per_s"] = round(tokens / last["time"])
    row["epochs"], row["best_epoch"] = len(history.epochs), history.best_epoch
    row["val_bleu_greedy"] = round(history["val_bleu"][history.best_epoch - 1], 2)
    # Greedy first, beam 5 last: eval-test.json and hyps-test.txt keep the beam-5 result.
    for label, beam in (("greedy", 1), ("beam5", 5)):
        run = load_run(run_dir, device="cpu", overrides=[f"decode.beam_size={beam}"])
        started = time.perf_counter()
        metrics = run.evaluate("test")
        row[f"test_bleu_{label}"] = round(metrics["bleu"], 2)
        row[f"test_chrf_{label}"] = round(metrics["chrf"], 2)
        row[f"decode_s_{label}"] = round(time.perf_counter() - started, 1)
    row["bleu_signature"] = metrics.notes["bleu_signature"]
    print(json.dumps(row), flush=True)
    return row


def plot(curves: dict[str, History], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, history in curves.items():
        minutes = [t / 60 for t in history["time"]]
        ax.plot(minutes, history["val_bleu"], marker="o", markersize=3, label=LABELS.get(name, name))
    ax.set_xlabel("training wall time (minutes; validation included — threads per run: see docs/RESULTS.md)")
    ax.set_ylabel("val BLEU (greedy, sacreBLEU)")
    ax.set_title("Multi30k en→de: BLEU against training time")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table(rows: list[dict]) -> str:
    columns = ["model", "params", "train_min", "tok_per_s", "epochs", "best_epoch", "val_bleu_greedy"]
    columns += ["test_bleu_greedy", "test_chrf_greedy", "test_bleu_beam5", "test_chrf_beam5", "decode_s_beam5"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [f"{row[c]:,}" if c == "params" else str(row.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Multi30k en→de: Transformer vs RNN baselines")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--retrain", action="store_true", help="train even where a finished run exists")
    parser.add_argument("--report-only", action="store_true", help="score finished runs only; train nothing")
    parser.add_argument("--plot", type=Path, default=Path("docs/translation_curves.png"))
    args = parser.parse_args()

    rows, curves = [], {}
    for name in args.models:
        run_dir = train(name, args.overrides, args.retrain, train_missing=not args.report_only)
        if run_dir is None:
            continue
        rows.append(score(name, run_dir))
        curves[name] = History.load(run_dir / "history.json")
    if not rows:
        raise SystemExit("no finished runs to report")
    plot(curves, args.plot)
    header = (f"## {time.strftime('%Y-%m-%d %H:%M')} — {platform.machine()}, {torch.get_num_threads()} threads, "
              f"torch {torch.__version__}; test = test_2016_flickr, {rows[0]['bleu_signature']}")  # fmt: skip
    report = "\n".join([header, "", table(rows), "", f"curves: {args.plot}", ""])
    print(report)
    summary = Path("runs/bench-translation-summary.md")
    summary.parent.mkdir(parents=True, exist_ok=True)
    with summary.open("a") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    main()
