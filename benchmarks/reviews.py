"""Review classification benchmarks — the figures docs/RESULTS.md reports for the classify task.

    python benchmarks/reviews.py amazon          # 5-fold CV, 5 and 3 classes: majority, TF-IDF + LR,
                                                 # from scratch, fine-tuned MiniLM (all in one run)
    python benchmarks/reviews.py chinese         # 10-category Chinese reviews: accuracy per category
    python benchmarks/reviews.py chinese --pretrain  # the same, the encoder pretrained (masked LM) first
    python benchmarks/reviews.py speed           # `predict` throughput on 10,000 short reviews
    python benchmarks/reviews.py amazon --quick  # smoke run: 2 folds, 1 epoch, tiny models
    python benchmarks/reviews.py audit           # are the Amazon texts predictive of their ratings?
    python benchmarks/reviews.py amazon --subset typed  # the CV on the typed reviews alone
    python benchmarks/reviews.py amazon --seeds 3  # MiniLM also as a 3-seed average, on the same folds
    python benchmarks/reviews.py ensemble --members chinese chinese-td  # average finished Chinese runs

amazon. Folds come from the classify task itself (``data.folds=5, data.fold=k``: seeded, identical
review texts always in the same fold), so every model — the baselines included — trains and tests
on exactly the same rows. Majority class and TF-IDF (word 1–2-grams, sublinear tf) + logistic
regression (class_weight balanced) are fit on each fold's training rows by scikit-learn; the two
neural models train with the shared trainer (configs/reviews/amazon.yaml; MiniLM with
``model.pretrained=minilm``, mean pooling as the model was trained with, layer-wise lr decay,
bf16 autocast), select their epoch on the fold's validation rows (drawn from its training part),
and are scored once on the fold's test rows. `--labels stars5` runs one label scheme only; a run
that finished with the same config is scored again rather than retrained (--retrain trains anew),
so a cut-off benchmark resumes where it stopped.
Reported: mean ± std over folds of accuracy, macro-F1 and MAE (stars), and the training minutes
per fold. Product quality: every review is held out exactly once, so the held-out predictions of
all folds are pooled; for each product with ≥ 10 of them, the mean predicted rating (expected
value of the predicted distribution) against the mean true rating, as a Spearman ρ.
The records also keep each local run's validation probabilities: MiniLM's row "prior_adjusted"
divides its probabilities by the training prior to a power τ that each fold chooses on its own
validation rows (never on the test rows), reported per fold beside the plain rule.

amazon --subset typed runs the same cross-validation on the typed reviews alone: the rows whose
texts `audit` finds predictive of their ratings (the sentence fragments are left out, into
runs/bench-reviews/amazon-typed.csv.gz).

chinese. configs/reviews/chinese.yaml (from scratch, sentencepiece over raw characters), a seeded
80/10/10 split; test accuracy overall and per category (手机 = phones), beside TF-IDF (character
1–3-grams: the text has no spaces between words) + LR fit on the same training rows, and the
validation accuracy per category, on which variants are compared (the test split chooses
nothing). A variant (`--set model.encoder_type=bigru --run-name chinese-bigru`) trains into its
own run directory; so does an amazon variant (`--minilm-set train.lr=5e-5 --run-name amazon-v2`).
`ensemble` averages the class probabilities of finished Chinese runs (their splits must match).
`chinese --pretrain` first pretrains the same encoder as a masked language model on the training
texts (configs/reviews/chinese_mlm.yaml: the same split, labels unused, test texts unseen; into
runs/bench-reviews/chinese-mlm, reused once finished) and starts the classifier from it; with
`--pretrain-set` (and `--run-name NAME`) the pretraining differs and goes to NAME-mlm.

audit. The Amazon sample mixes two kinds of text: ordinary reviews, and lower-cased, tokenized
sentence fragments (`tiff format( i knew this before hand , and it is not that bad ) .`) that read
like another corpus's camera-review sentences. For each kind, TF-IDF + LR is cross-validated on
that kind's rows alone over the same 5 folds; a kind whose macro-F1 sits at chance has ratings
that its texts do not predict.

speed. The from-scratch Amazon model (trained by ``amazon`` or ``heedful train``) predicts 10,000
short reviews (review texts repeated) with batches of 1,024 and of 1; reviews/s for both.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import re
import statistics
import time
from collections import Counter
from pathlib import Path

import torch

from common import fit_or_reuse, header
from heedful.data.labelled import split_examples
from heedful.data.text import BadRows, LabelMap
from heedful.runs import load_config, load_run
from heedful.tasks import get_task
from heedful.tasks.text_baselines import baseline_probabilities, fit_tfidf_lr
from heedful.train import History

ROOT = Path("runs/bench-reviews")
AMAZON = "configs/reviews/amazon.yaml"
CHINESE = "configs/reviews/chinese.yaml"
CHINESE_MLM = "configs/reviews/chinese_mlm.yaml"
QUICK = ["train.epochs=1", "model.encoder.n_encoder_layers=1", "model.encoder.d_model=32", "model.encoder.d_ff=64",
         "model.encoder.n_heads=2", "data.tokenizer.vocab_size=500"]  # fmt: skip
# MiniLM (all-MiniLM-L6-v2) was trained as a sentence encoder with mean pooling: fine-tune it so.
MINILM = ["model.pretrained=minilm", "model.pooling=mean", "train.lr=1e-4", "train.epochs=6", "train.batch_size=16",
          "train.warmup_steps=60", "finetune.layer_lr_decay=0.9", "model.dropout=0.1", "train.precision=bf16",
          "train.weight_decay=0.01"]  # fmt: skip

# The benchmark fits the baselines itself (it needs their probabilities, to pool and to group), so
# the runs' own evaluate does not fit them a second time.
OWN_BASELINES = ["data.baselines=none"]


def common(run_dir: Path, overrides: list[str]) -> list[str]:
    return [f"run_dir={run_dir}", "train.progress=false", "train.tensorboard=false", *overrides]


def score(probs: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> dict[str, float]:
    """Accuracy, macro-F1 and MAE (in classes: star ratings are ordinal) of probabilities (N, C)."""
    from heedful.metrics.classification import classification_metrics

    metrics, _ = classification_metrics(probs, labels, classes, ordinal=True)
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "mae") if k in metrics}


def probabilities(run, examples) -> torch.Tensor:
    """A classify run's class probabilities (N, C) for ``examples``, each the mean over its windows."""
    return run.task._probabilities(run.model, [e.windows for e in examples])


def correct_by_category(predicted: torch.Tensor, examples) -> dict[str, list[bool]]:
    """Whether each prediction (N,) is right, grouped by the examples' group column."""
    correct = (predicted == torch.tensor([e.label for e in examples])).tolist()
    by_cat: dict[str, list[bool]] = {}
    for e, ok in zip(examples, correct, strict=True):
        by_cat.setdefault(e.group, []).append(ok)
    return by_cat


def share(oks: list[bool]) -> float:
    return sum(oks) / len(oks)


def raw_amazon_rows() -> tuple[list[str], list[list[str]], int]:
    """The Amazon sample's CSV as written: its header, its rows, and the index of the text column.
    Read raw because the reader strips the stray spaces that mark many of the fragments."""
    with gzip.open(load_config(AMAZON).data.path, "rt", encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        head = next(reader)
        return head, [row for row in reader if len(row) == len(head)], head.index("Reviews")


def fragment_texts() -> set[str]:
    """The Amazon sample's sentence fragments, as the reader gives them (stripped)."""
    _, rows, text = raw_amazon_rows()
    return {row[text].replace("\ufeff", "").strip() for row in rows if is_fragment(row[text])}


def typed_reviews_file() -> Path:
    """The Amazon sample without its sentence fragments (see ``audit``): the same CSV columns,
    written once under runs/ (derived data, never committed)."""
    source = load_config(AMAZON).data.path
    target = ROOT / "amazon-typed.csv.gz"
    if target.is_file() and target.stat().st_mtime > source.stat().st_mtime:
        return target
    head, rows, text = raw_amazon_rows()
    kept = [row for row in rows if not is_fragment(row[text])]
    with gzip.open(target, "wt", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([head, *kept])
    print(f"{target}: {len(kept)} typed reviews of {source} (sentence fragments left out)", flush=True)
    return target


def device_of(args) -> str:
    """The device the runs train on (``--set device=cuda``); the benchmark scores them there too."""
    return next((o.split("=", 1)[1] for o in reversed(args.overrides) if o.startswith("device=")), "cpu")


def amazon_models(args, labels: str, fold: int, folds: int, extra: list[str]) -> dict[str, list[str]]:
    """The neural models of one fold, each as its config overrides (the baselines need none)."""
    base = [f"data.labels={labels}", f"data.folds={folds}", f"data.fold={fold}", "data.val_fraction=0.1",
            *extra, *(QUICK if args.quick else []), *args.overrides]  # fmt: skip
    # The BiGRU shares the from-scratch model's data, tokenizer, pooling and training settings.
    models = {"from_scratch": base, "bigru": [*base, "model.encoder_type=bigru"]}
    if not args.no_minilm:
        split_seed_of = load_config(AMAZON, args.overrides).seed
        minilm = [*base, *MINILM, *(["train.epochs=1"] if args.quick else []), *args.minilm_overrides]
        models["minilm"] = minilm
        # Further seeds train on the same folds (the split keeps the first seed's), so their
        # probabilities can be averaged example by example.
        for seed in range(split_seed_of + 1, split_seed_of + args.seeds):
            models[f"minilm-seed{seed}"] = [*minilm, f"seed={seed}", f"data.split_seed={split_seed_of}"]
    return models


def fold_record(args, labels: str, fold: int, folds: int, prefix: str, extra: list[str]) -> dict:
    """Train (or reuse) every model of one fold and keep what the tables need: the fold's test rows
    (text, label, product) and each model's test probabilities (N, C), training minutes and epochs.

    The record is written to ``records/`` after each model, so a cut-off run, or folds run as
    separate processes (``--fold K``, e.g. in parallel on one GPU), resume and pool from it; a
    model already in the record is not trained again (``--retrain`` trains every one anew)."""
    path = ROOT / "records" / f"{prefix}-{labels}-fold{fold}.json"
    record: dict = {"models": {}}
    if path.is_file() and not args.retrain:
        record = json.loads(path.read_text())
    models = amazon_models(args, labels, fold, folds, extra)
    task = None
    path.parent.mkdir(parents=True, exist_ok=True)
    for name, overrides in models.items():
        run_dir = ROOT / f"{prefix}-{labels}-{name}-fold{fold}"
        if name in record["models"]:
            if "val_probs" not in record["models"][name] and add_validation(record, name, run_dir, device_of(args)):
                path.write_text(json.dumps(record) + "\n")
            continue
        minutes = fit_or_reuse(load_config(AMAZON, common(run_dir, overrides)), args.retrain)
        run = load_run(run_dir, device_of(args), OWN_BASELINES)
        run.evaluate("test")
        task = run.task
        test = task.data.splits["test"]
        rows = {"text": [e.text for e in test], "label": [e.label for e in test], "group": [e.group for e in test]}
        if record.get("test", rows) != rows:
            raise SystemExit(f"{run_dir}: its test rows differ from the fold's other models'; cannot pool them")
        history = History.load(run_dir / "history.json")
        record["test"], record["classes"] = rows, list(task.labels.classes)
        record["models"][name] = {"probs": probabilities(run, test).cpu().tolist(), "minutes": minutes,
                                  "epochs": len(history.epochs), "overrides": overrides,
                                  "device": run.cfg.device}  # fmt: skip
        if "baselines" not in record:  # fit on the training texts of this same fold
            record["baselines"] = {k: v.tolist() for k, v in baselines(task).items()}
        add_validation(record, name, run_dir, device_of(args), run)
        path.write_text(json.dumps(record) + "\n")
        print(f"{labels} fold {fold} {name}: " + json.dumps(score(torch.tensor(record["models"][name]["probs"]),
              torch.tensor(rows["label"]), record["classes"])), flush=True)  # fmt: skip
    return record


def add_validation(record: dict, name: str, run_dir: Path, device: str, run=None) -> bool:
    """Put the fold's validation rows' labels, its training class counts and ``name``'s validation
    probabilities (N_val, C) into the record (the caller writes it): decision rules are chosen on
    them (``prior_adjusted``), never on the test rows. A model trained elsewhere (no finished run
    here) is left without: False."""
    if run is None:
        if not (run_dir / "history.json").is_file() or not History.load(run_dir / "history.json").completed:
            return False
        run = load_run(run_dir, device, OWN_BASELINES)
        if run.task.data is None:
            run.task.build_data(run.cfg)
    val = run.task.data.splits["val"]
    labels = [e.label for e in val]
    if record.setdefault("val", {"label": labels})["label"] != labels:
        raise SystemExit(f"{run_dir}: its validation rows differ from the fold's other models'")
    counts = Counter(e.label for e in run.task.train_texts)
    record["train_counts"] = [counts.get(c, 0) for c in range(len(record["classes"]))]
    record["models"][name]["val_probs"] = probabilities(run, val).cpu().tolist()
    print(f"{run_dir.name}: validation probabilities", flush=True)
    return True


# The decision rule tried as the first change (chosen on validation rows only): logit adjustment
# (Menon et al. 2021), p'(c) ∝ p(c) / prior(c)^τ — τ = 0 is the plain argmax, τ = 1 divides out the
# training prior, which a macro-averaged score rewards (TF-IDF + LR gets the same effect from
# class_weight="balanced"). τ is chosen per fold on that fold's validation rows.
TAUS = [0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5]


def prior_adjust(probs: torch.Tensor, counts: list[int], tau: float) -> torch.Tensor:
    prior = torch.tensor(counts, dtype=probs.dtype).clamp(min=1) / sum(counts)  # (C,)
    adjusted = probs / prior**tau  # (N, C)
    return adjusted / adjusted.sum(-1, keepdim=True)


def macro_f1(probs: torch.Tensor, labels: list[int], classes: int) -> float:
    """As ``heedful evaluate`` scores it (metrics/classification.py): the mean over the classes in the
    labels or the predictions (``classes`` is kept for the callers; every split here holds them all)."""
    from sklearn.metrics import f1_score

    return float(f1_score(labels, probs.argmax(-1).tolist(), average="macro", zero_division=0))


def chosen_tau(record: dict, seeds: list[str]) -> float | None:
    """τ of ``TAUS`` that maximises macro-F1 on the fold's validation rows, for the mean of the
    validation probabilities of ``seeds`` that have them (None where none has)."""
    with_val = [torch.tensor(record["models"][s]["val_probs"]) for s in seeds if "val_probs" in record["models"][s]]
    if not with_val:
        return None
    probs = torch.stack(with_val).mean(0)  # (N_val, C)
    labels, classes = record["val"]["label"], len(record["classes"])
    return max(TAUS, key=lambda tau: (macro_f1(prior_adjust(probs, record["train_counts"], tau), labels, classes),
                                      -tau))  # fmt: skip


def baselines(task) -> dict[str, torch.Tensor]:
    """Majority class and TF-IDF + LR with word 1–2-grams and with character 1–3-grams, fit on the
    task's own training texts: their test probabilities (N, C), as ``heedful evaluate`` scores them
    (tasks/text_baselines.py)."""
    train, test = task.train_texts, task.data.splits["test"]
    args = ([e.text for e in train], [e.label for e in train], [e.text for e in test], len(task.labels.classes))
    word = baseline_probabilities(*args, "word")
    return {"majority": word["majority"], "tfidf_lr": word["tfidf_lr"],
            "tfidf_lr_char": baseline_probabilities(*args, "char")["tfidf_lr"]}  # fmt: skip


def amazon(args) -> list[str]:
    lines = []
    folds = 2 if args.quick else 5
    prefix, extra = "amazon", []
    if args.subset == "typed":
        prefix, extra = "amazon-typed", [f"data.path={typed_reviews_file()}"]
    prefix = args.run_name or prefix
    for labels in args.labels:
        records = [fold_record(args, labels, fold, folds, prefix, extra) for fold in (args.fold or range(folds))]
        if args.fold:  # a part of the folds: the records are written; the tables wait for every fold
            continue
        what = "typed reviews only (fragments left out)" if args.subset == "typed" else "the whole sample"
        if args.minilm_overrides:
            what += f"; MiniLM with {' '.join(args.minilm_overrides)}"
        if args.seeds > 1:
            what += f"; MiniLM also as the mean of {args.seeds} seeds' probabilities"
        lines += amazon_tables(records, labels, f"### Amazon, {labels}, {folds}-fold CV, {what}", prefix)
    return lines


def trained_on(entry: dict) -> str:
    """ "cpu" or "cuda": where a recorded model trained (records before the field: from its overrides)."""
    device = entry.get("device") or next((o.split("=", 1)[1] for o in reversed(entry["overrides"])
                                          if o.startswith("device=")), "cpu")  # fmt: skip
    return "cuda" if device.startswith("cuda") else "cpu"


def model_probabilities(record: dict) -> dict[str, tuple[torch.Tensor, float | None]]:
    """Every model of a fold record as (test probabilities (N, C), training minutes on 2 CPU cores
    or None): the runs, the seeds' average (its minutes the members' sum), MiniLM with the
    validation-chosen prior adjustment, and the baselines. Minutes of a model trained on a GPU are
    not CPU minutes: None here (``gpu_minutes`` has them)."""
    runs = record["models"]

    def cpu_minutes(names: list[str]) -> float | None:
        return None if any(trained_on(runs[n]) != "cpu" for n in names) else sum(runs[n]["minutes"] for n in names)

    out = {name: (torch.tensor(m["probs"]), cpu_minutes([name])) for name, m in runs.items() if "-seed" not in name}
    seeds = [name for name in runs if name.startswith("minilm")]
    best = "minilm"
    if len(seeds) > 1:
        average = torch.stack([torch.tensor(runs[s]["probs"]) for s in seeds]).mean(0)  # (N, C), example by example
        best = f"minilm_{len(seeds)}_seeds"
        out[best] = (average, cpu_minutes(seeds))
    if seeds and "train_counts" in record:
        # A fold none of whose MiniLM runs is here to give validation probabilities keeps the
        # plain rule (τ = 0): nothing was chosen for it.
        tau = chosen_tau(record, seeds) or 0.0
        out[f"{best}_prior_adjusted"] = (prior_adjust(out[best][0], record["train_counts"], tau), None)
    out |= {name: (torch.tensor(p), None) for name, p in record["baselines"].items()}
    return out


def gpu_minutes(records: list[dict]) -> list[str]:
    """One line per model trained on a GPU: its mean training minutes per fold."""
    minutes: dict[str, list[float]] = {}
    for record in records:
        for name, entry in record["models"].items():
            if trained_on(entry) == "cuda":
                minutes.setdefault(name, []).append(entry["minutes"])
    return [f"{name} trained on the GPU in {statistics.mean(m):.1f} min per fold ({len(m)} folds)"
            for name, m in minutes.items()]  # fmt: skip


def amazon_tables(records: list[dict], labels: str, title: str, prefix: str) -> list[str]:
    """The cross-validation table, per-class F1 and the lead by review length, pooled over folds."""
    per_model: dict[str, list[dict[str, float]]] = {}
    pooled: dict[str, list[tuple[str, float, int]]] = {}  # model -> (product, expected, true)
    classes = records[0]["classes"]
    for record in records:
        truth = torch.tensor(record["test"]["label"])
        for name, (probs, minutes) in model_probabilities(record).items():
            per_model.setdefault(name, []).append({**score(probs, truth, classes),
                                                   **({} if minutes is None else {"minutes": minutes})})  # fmt: skip
            expected = probs @ torch.arange(probs.shape[1], dtype=probs.dtype)  # (N,): the expected class
            rows = zip(record["test"]["group"], expected.tolist(), truth.tolist(), strict=True)
            pooled.setdefault(name, []).extend(rows)
    lines = [title, "", "| model | accuracy | macro-F1 | MAE | train min/fold | products (≥ 10) | product ρ |",
             "|---|--:|--:|--:|--:|--:|--:|"]  # fmt: skip
    for name, rows in per_model.items():
        cells = [name]
        for key in ("accuracy", "macro_f1", "mae"):
            values = [r[key] for r in rows if key in r]
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.3f} ± {sd:.3f}" if values else "")
        minutes = [r["minutes"] for r in rows if "minutes" in r]
        cells.append(f"{statistics.mean(minutes):.1f}" if minutes else "–")
        n, rho = product_quality(pooled[name])
        cells += [str(n), f"{rho:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    # MiniLM (its seeds' average where there is one) is the model the comparison is about; without
    # it (--no-minilm) the best from-scratch model stands in.
    best = next((n for n in per_model if n.startswith("minilm_")), "minilm" if "minilm" in per_model else None)
    names = [n for n in (best, f"{best}_prior_adjusted", "from_scratch", "bigru", "tfidf_lr", "tfidf_lr_char")
             if n in per_model]  # fmt: skip
    on_gpu = gpu_minutes(records)
    if on_gpu:
        lines += ["", "Training minutes per fold are on 2 CPU cores; a row with a GPU-trained member shows none. "
                  + "; ".join(on_gpu) + "."]  # fmt: skip
    lines += ["", *prior_adjustment_lines(records), *breakdown(records, classes, names)]
    shown = best or "tfidf_lr"
    plot_products(pooled[shown], ROOT / f"{prefix}-{labels}-products-{shown}.png", f"{shown}, {labels}")
    return [*lines, ""]


def prior_adjustment_lines(records: list[dict]) -> list[str]:
    """The first validation-chosen change: each fold's τ and its macro-F1 on the fold's validation
    rows (where it was chosen) and test rows (where it is only reported), before and after."""
    rows = []
    for k, record in enumerate(records):
        seeds = [name for name in record["models"] if name.startswith("minilm")]
        tau = chosen_tau(record, seeds) if seeds else None
        if tau is None:
            if seeds and "train_counts" in record:
                rows.append(f"| {k} | 0 of {len(seeds)} | – (τ = 0 kept) | | | | |")
            continue
        classes, counts = len(record["classes"]), record["train_counts"]
        val = torch.stack([torch.tensor(record["models"][s]["val_probs"]) for s in seeds
                           if "val_probs" in record["models"][s]]).mean(0)  # fmt: skip
        test = torch.stack([torch.tensor(record["models"][s]["probs"]) for s in seeds]).mean(0)
        with_val = sum("val_probs" in record["models"][s] for s in seeds)
        cells = [macro_f1(val, record["val"]["label"], classes),
                 macro_f1(prior_adjust(val, counts, tau), record["val"]["label"], classes),
                 macro_f1(test, record["test"]["label"], classes),
                 macro_f1(prior_adjust(test, counts, tau), record["test"]["label"], classes)]  # fmt: skip
        rows.append(f"| {k} | {with_val} of {len(seeds)} | {tau:g} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    if not rows:
        return []
    return ["Prior adjustment of MiniLM, τ chosen per fold on its validation rows (seeds with validation "
            "probabilities averaged there; the test column averages every seed):", "",
            "| fold | seeds on val | τ | val macro-F1 | adjusted | test macro-F1 | adjusted |",
            "|--:|--:|--:|--:|--:|--:|--:|", *rows, ""]  # fmt: skip


def breakdown(records: list[dict], classes: list[str], names: list[str]) -> list[str]:
    """Per-class F1 and macro-F1 on short and long reviews, every fold's held-out rows pooled.
    Short: at most the median word count of all held-out texts."""
    from sklearn.metrics import f1_score

    texts = [t for r in records for t in r["test"]["text"]]
    truth = [y for r in records for y in r["test"]["label"]]
    words = [len(t.split()) for t in texts]
    cut = statistics.median(words)
    predicted = {n: [p for r in records for p in model_probabilities(r)[n][0].argmax(-1).tolist()] for n in names}
    index = list(range(len(classes)))
    lines = [f"Pooled held-out rows ({len(texts):,}); short = at most {cut:g} words "
             f"({sum(w <= cut for w in words):,} rows), long = more ({sum(w > cut for w in words):,} rows).", "",
             "| model | " + " | ".join(f"F1 {c}" for c in classes) + " | macro-F1 short | macro-F1 long |",
             "|---|" + "--:|" * (len(classes) + 2)]  # fmt: skip
    for name, pred in predicted.items():
        per_class = f1_score(truth, pred, labels=index, average=None, zero_division=0)
        by_length = []
        for short in (True, False):
            keep = [i for i, w in enumerate(words) if (w <= cut) == short]
            by_length.append(f1_score([truth[i] for i in keep], [pred[i] for i in keep], labels=index,
                                      average="macro", zero_division=0))  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(f"{f:.3f}" for f in [*per_class, *by_length]) + " |")
    return lines


def plot_products(rows: list[tuple[str, float, int]], path: Path, title: str, min_size: int = 10) -> None:
    """Predicted against true mean rating (in stars) per product with ≥ ``min_size`` held-out reviews."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kept = [v for v in by_product(rows).values() if len(v) >= min_size]
    true = [1 + statistics.mean(y for _, y in v) for v in kept]
    predicted = [1 + statistics.mean(x for x, _ in v) for v in kept]
    n, rho = product_quality(rows, min_size)
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.scatter(true, predicted, s=[4 + len(v) / 4 for v in kept], alpha=0.7)
    lo, hi = min(true + predicted), max(true + predicted)
    ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
    ax.set_xlabel("true mean class (1 = lowest)")
    ax.set_ylabel("predicted mean class (expected value)")
    ax.set_title(f"{title}: {n} products, ρ = {rho:.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"{path}: product scatter", flush=True)


def by_product(rows: list[tuple[str, float, int]]) -> dict[str, list[tuple[float, int]]]:
    grouped: dict[str, list[tuple[float, int]]] = {}
    for product, expected, true in rows:
        grouped.setdefault(product, []).append((expected, true))
    return grouped


def product_quality(rows: list[tuple[str, float, int]], min_size: int = 10) -> tuple[int, float]:
    from scipy.stats import spearmanr

    kept = [v for v in by_product(rows).values() if len(v) >= min_size]
    if len(kept) < 3:
        return len(kept), float("nan")
    predicted = [statistics.mean(x for x, _ in v) for v in kept]
    true = [statistics.mean(y for _, y in v) for v in kept]
    return len(kept), float(spearmanr(predicted, true).statistic)


def chinese(args) -> list[str]:
    run_dir = ROOT / (args.run_name or "chinese")
    # --quick keeps a vocabulary that holds the text's ~3,800 distinct characters.
    quick = [*QUICK, "data.tokenizer.vocab_size=4000"] if args.quick else []
    overrides, pretraining = list(args.overrides), ""
    if args.pretrain:
        # The masked-LM run shares the thread count and device of --set; its own settings come
        # from --pretrain-set. Classifier variants share the default pretraining; a pretraining
        # variant gets its own directory, so the default one is never overwritten.
        if args.pretrain_overrides and not args.run_name:
            raise SystemExit("--pretrain-set needs --run-name: the variant's pretraining goes to <run name>-mlm")
        name = f"{args.run_name}-mlm" if args.pretrain_overrides else "chinese-mlm"
        mlm_dir = ROOT / (f"{name}-quick" if args.quick else name)
        shared = [o for o in args.overrides if o.startswith(("train.num_threads=", "device="))]
        mlm_cfg = load_config(CHINESE_MLM, common(mlm_dir, [*quick, *shared, *args.pretrain_overrides]))
        mlm_minutes = fit_or_reuse(mlm_cfg, args.retrain)
        overrides.append(f"model.pretrained={mlm_dir}")
        pretraining = f"; masked-LM pretraining {mlm_minutes:.1f} min ({mlm_dir.name})"
    cfg = load_config(CHINESE, common(run_dir, [*quick, *overrides]))
    minutes = fit_or_reuse(cfg, args.retrain)
    run = load_run(run_dir, "cpu", OWN_BASELINES)
    metrics = run.evaluate("test")

    train = run.task.train_texts
    vectorizer, lr = fit_tfidf_lr([e.text for e in train], [e.label for e in train], "char")

    def per_category(split: str, tfidf: bool = False) -> dict[str, list[bool]]:
        examples = run.task.data.splits[split]
        if tfidf:
            predicted = torch.as_tensor(lr.predict(vectorizer.transform([e.text for e in examples])))
        else:
            predicted = probabilities(run, examples).argmax(-1)
        return correct_by_category(predicted, examples)

    # Validation accuracy per category too: variants are compared on it, never on the test split.
    val, test, tfidf = per_category("val"), per_category("test"), per_category("test", tfidf=True)
    variant = f" — {args.run_name}: {' '.join(overrides)}" if args.run_name else ""
    lines = [f"### Chinese reviews, 10 categories (from scratch){variant}", "",
             f"overall test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}; "
             f"training {minutes:.1f} min{pretraining}; TF-IDF (character 1–3-grams) + LR, same rows: "
             f"{share([ok for oks in tfidf.values() for ok in oks]):.4f}", "",
             "| category | test reviews | test accuracy | TF-IDF + LR | val reviews | val accuracy |",
             "|---|--:|--:|--:|--:|--:|"]  # fmt: skip
    for cat, oks in sorted(test.items(), key=lambda kv: -len(kv[1])):
        v = val.get(cat, [])
        val_cells = f"{len(v)} | {share(v):.4f}" if v else "0 | –"
        lines.append(f"| {cat} | {len(oks)} | {share(oks):.4f} | {share(tfidf[cat]):.4f} | {val_cells} |")
    return [*lines, ""]


def ensemble(args) -> list[str]:
    """Average the class probabilities of finished Chinese runs (`--members`, run directories under
    runs/bench-reviews): accuracy on val and test, overall and on phones. No training."""
    members = args.members or ["chinese"]
    scored, reference, reference_texts = [], None, None
    for name in members:
        run = load_run(ROOT / name, device="cpu")
        if run.task.data is None:
            run.task.build_data(run.cfg)
        splits = {s: run.task.data.splits[s] for s in ("val", "test")}
        texts = {s: [e.text for e in part] for s, part in splits.items()}
        if reference is None:
            reference, reference_texts = splits, texts
        elif texts != reference_texts:
            raise SystemExit(f"{ROOT / name}: its val/test rows differ from {ROOT / members[0]}'s; cannot average")
        scored.append({s: probabilities(run, part) for s, part in splits.items()})
    cells = []
    for split, part in reference.items():
        probs = sum(m[split] for m in scored) / len(scored)  # (N, C)
        by_cat = correct_by_category(probs.argmax(-1), part)
        cells += [f"{share([ok for oks in by_cat.values() for ok in oks]):.4f}", f"{share(by_cat['手机']):.4f}"]
    return [f"### Chinese reviews: the average of {len(members)} runs ({', '.join(members)})", "",
            "| val, all | val, phones | test, all | test, phones |", "|--:|--:|--:|--:|",
            "| " + " | ".join(cells) + " |", ""]  # fmt: skip


# Marks of the fragments' tokenizer: punctuation and clitics split off by spaces, numbered items.
_TOKENIZED = re.compile(r" [,.!?;:)] | [.!?]$|\( | n't | '[a-z]+ |^[0-9]+ \. ")


def is_fragment(text: str) -> bool:
    """A lower-cased, space-tokenized sentence (`… , but take your chance .`), not a typed review.

    The fragments are lower case apart from anonymised brands (`Brand A`), and carry the marks of a
    tokenizer or a stray space at either end (their titles too: `tfield tested `); typed reviews,
    even short lower-case ones (`very good`), do not."""
    lowered = re.sub(r"Brand [A-Z]", "brand", text)
    if lowered != lowered.lower():
        return False
    return text.startswith(" ") or text.endswith(" ") or _TOKENIZED.search(text) is not None


def audit(args) -> list[str]:
    """Is the sample clean? Rows marked as the withdrawn copy's (anonymised `Brand A` brands), texts
    that look like its tokenized sentence fragments, and texts repeated with different ratings; when
    fragments are many, TF-IDF + LR is cross-validated within each kind of text (a kind at chance
    has ratings its texts do not predict)."""
    head, rows, text = raw_amazon_rows()
    rating, brand = head.index("Rating"), head.index("Brand Name")
    stripped = [row[text].replace("\ufeff", "").strip() for row in rows]  # as the reader gives them
    ratings: dict[str, set[str]] = {}
    for row, t in zip(rows, stripped, strict=True):
        ratings.setdefault(t, set()).add(row[rating])
    counts = Counter(stripped)
    repeated = [t for t, n in counts.items() if n > 1]
    conflicting = [t for t in repeated if len(ratings[t]) > 1]
    anonymised = sum(bool(re.search(r"Brand [A-Z]\b", row[brand] + " " + row[text])) for row in rows)
    fragments = {t for row, t in zip(rows, stripped, strict=True) if is_fragment(row[text])}  # fragment_texts()
    flagged = sum(counts[t] for t in fragments)
    lines = ["### Amazon sample audit", "",
             f"- {len(rows):,} rows, {len(counts):,} distinct texts; {len(repeated):,} texts occur more than once "
             f"({sum(counts[t] for t in repeated):,} rows), {len(conflicting)} of them with different ratings "
             f"({sum(counts[t] for t in conflicting)} rows; e.g. {', '.join(repr(t) for t in conflicting[:3])}).",
             f"- rows with an anonymised brand (`Brand` + one capital, the withdrawn copy's mark): {anonymised}.",
             f"- rows whose text looks like a tokenized sentence fragment (`is_fragment`): {flagged} "
             f"({flagged / len(rows):.1%})."]  # fmt: skip
    if flagged < 200 or flagged > len(rows) - 200:
        verdict = "clean" if anonymised == 0 and flagged < 0.01 * len(rows) else "NOT clean"
        return [*lines, f"- verdict: {verdict} (too few flagged rows to cross-validate apart).", ""]
    from sklearn.metrics import f1_score

    lines += ["", "| labels | kind | rows | accuracy | macro-F1 | macro-F1 of a round-robin guess |",
              "|---|---|--:|--:|--:|--:|"]  # fmt: skip
    for labels in args.labels:
        pooled: dict[str, tuple[list[int], list[int]]] = {"fragments": ([], []), "reviews": ([], [])}
        # The rows are read once; each fold is the classify task's own split of them.
        cfg = load_config(AMAZON, common(ROOT / "audit", [f"data.labels={labels}", "data.folds=5"]))
        task = get_task("classify")(cfg)
        task.labels = LabelMap(cfg.data.labels, tuple(cfg.data.classes) if cfg.data.classes else None)
        examples = task._read(cfg.data.path, BadRows())
        for fold in range(5):
            split = split_examples(examples, cfg.data.model_copy(update={"fold": fold}), cfg.seed)
            for kind, wanted in (("fragments", True), ("reviews", False)):
                part = [r for r in split["train"] if (r.text in fragments) == wanted]
                test = [r for r in split["test"] if (r.text in fragments) == wanted]
                vectorizer, lr = fit_tfidf_lr([r.text for r in part], [r.label for r in part])
                pooled[kind][0].extend(r.label for r in test)
                pooled[kind][1].extend(lr.predict(vectorizer.transform([r.text for r in test])).tolist())
        n_classes = len(task.labels.classes)
        for kind, (true, predicted) in pooled.items():
            accuracy = sum(t == p for t, p in zip(true, predicted, strict=True)) / len(true)
            chance = f1_score(true, [i % n_classes for i in range(len(true))], average="macro")
            f1 = f1_score(true, predicted, average="macro")
            lines.append(f"| {labels} | {kind} | {len(true)} | {accuracy:.3f} | {f1:.3f} | {chance:.3f} |")
    return [*lines, ""]


def speed(args) -> list[str]:
    run_dir = ROOT / "amazon-stars5-from_scratch-fold0"
    if not (run_dir / "model").is_dir():
        raise SystemExit(f"{run_dir}: run `benchmarks/reviews.py amazon` first (it trains the model timed here)")
    run = load_run(run_dir, "cpu", OWN_BASELINES)
    texts = [e.text for e in run.task.data.splits["test"]] if run.task.data else []
    if not texts:
        run.evaluate("test")
        texts = [e.text for e in run.task.data.splits["test"]]
    short = [t for t in texts if len(t) <= 200] or texts
    n = 200 if args.quick else 10_000
    batch = (short * (n // len(short) + 1))[:n]
    started = time.perf_counter()
    for i in range(0, n, 1024):
        run.predict(batch[i : i + 1024])
    batched = n / (time.perf_counter() - started)
    one_n = min(n, 500)
    started = time.perf_counter()
    for text in batch[:one_n]:
        run.predict([text])
    single = one_n / (time.perf_counter() - started)
    return ["### predict throughput (from-scratch model)", "",
            f"{n} short reviews (≤ 200 characters): {batched:,.0f} reviews/s with batches of 1,024; "
            f"{single:,.0f} reviews/s one at a time ({one_n} reviews); ratio {batched / single:.1f}×", ""]  # fmt: skip


def main() -> None:
    global ROOT
    parser = argparse.ArgumentParser(description="review classification benchmarks")
    parser.add_argument("which", choices=["amazon", "chinese", "ensemble", "speed", "audit", "all"])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 folds, 1 epoch, tiny models")
    parser.add_argument("--no-minilm", action="store_true", help="skip the fine-tuned MiniLM (the slowest model)")
    parser.add_argument("--labels", nargs="+", choices=["stars5", "stars3"], default=["stars5", "stars3"],
                        help="amazon: the label schemes to cross-validate")  # fmt: skip
    parser.add_argument("--retrain", action="store_true", help="train even where a finished run exists")
    parser.add_argument("--subset", choices=["all", "typed"], default="all",
                        help="amazon: every row, or the typed reviews only (the sentence fragments `audit` "
                             "finds left out)")  # fmt: skip
    parser.add_argument("--run-name", help="a variant's own run directory under runs/bench-reviews, so the "
                        "default runs are kept (chinese: the directory; amazon: the folds' prefix)")  # fmt: skip
    parser.add_argument("--members", nargs="+", metavar="RUN_NAME",
                        help="ensemble: the finished chinese runs to average (default: chinese)")  # fmt: skip
    parser.add_argument("--pretrain", action="store_true",
                        help="chinese: pretrain the encoder on the training texts first (configs/reviews/"
                             "chinese_mlm.yaml, into runs/bench-reviews/chinese-mlm) and start from it")  # fmt: skip
    parser.add_argument("--pretrain-set", dest="pretrain_overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="chinese --pretrain: overrides for the masked-LM run")  # fmt: skip
    parser.add_argument("--seeds", type=int, default=1,
                        help="amazon: fine-tune MiniLM with this many seeds on the same folds and report their "
                             "averaged probabilities too (training minutes: the members' sum)")  # fmt: skip
    parser.add_argument("--minilm-set", dest="minilm_overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="amazon: overrides for the fine-tuned MiniLM alone, after its own settings")  # fmt: skip
    parser.add_argument("--fold", type=int, nargs="+", metavar="K",
                        help="amazon: train and record these folds only (run folds as parallel processes, then once "
                             "without --fold to pool the records into the tables)")  # fmt: skip
    parser.add_argument("--root", type=Path, default=ROOT, help=f"where runs and records go (default {ROOT})")
    args = parser.parse_args()
    ROOT = args.root
    ROOT.mkdir(parents=True, exist_ok=True)
    if device_of(args).startswith("cuda"):
        # Token-length batches make nearly every batch a new shape, and the cuDNN attention backend
        # that PyTorch prefers for bf16 on Hopper builds a plan per shape (0.07-0.09x the fp32 speed,
        # measured 2026-12-04); the flash and memory-efficient kernels compute the same attention.
        torch.backends.cuda.enable_cudnn_sdp(False)
    lines = [f"{header(args.overrides)}{' (--quick)' if args.quick else ''}", ""]
    chosen = ["amazon", "chinese", "speed"] if args.which == "all" else [args.which]
    benchmarks = {"amazon": amazon, "chinese": chinese, "ensemble": ensemble, "speed": speed, "audit": audit}
    for which in chosen:
        lines += benchmarks[which](args)
    report = "\n".join(lines)
    print(report)
    with (ROOT / "summary.md").open("a") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    main()
