"""The classify task end to end on a tiny synthetic review file: training through the shared
trainer, metrics, per-group quality, predict/explain, class weighting by hand, and splitting
that keeps identical texts together."""

import csv
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from heedful.errors import ConfigError, UserError
from heedful.runs import load_config, load_run
from heedful.tasks import get_task
from heedful.tasks.classify import expected_calibration_error, split_examples
from heedful.train import fit

ROOT = Path(__file__).resolve().parents[2]
FILLER = [
    "phone",
    "screen",
    "battery",
    "camera",
    "case",
    "price",
    "seller",
    "box",
    "charger",
    "day",
    "week",
    "sound",
    "apps",
]


def write_reviews(path: Path, n: int = 400, seed: int = 0) -> Path:
    """Label 5 stars when the review says 'excellent', else 1 star; products A–F; a few exact repeats."""
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Product Name", "Rating", "Reviews"])
        for i in range(n):
            words = rng.choices(FILLER, k=rng.randint(4, 9))
            good = rng.random() < 0.3  # skewed, as ratings are
            if good:
                words.insert(rng.randrange(len(words) + 1), "excellent")
            text = " ".join(words) if i % 50 else "same text every time"
            writer.writerow([f"phone {'ABCDEF'[i % 6]}", 5 if good and i % 50 else 1, text])
    return path


def config(tmp_path, **extra):
    values = {
        "data.path": str(write_reviews(tmp_path / "reviews.csv")),
        "data.labels": "binary",
        "data.tokenizer.vocab_size": 300,
        "data.min_group_size": 5,
        "model.encoder.d_model": 32,
        "model.encoder.n_heads": 2,
        "model.encoder.n_encoder_layers": 1,
        "model.encoder.d_ff": 64,
        "model.encoder.dropout": 0.0,
        "model.dropout": 0.0,
        "train.epochs": 12,
        "train.lr": 3e-3,
        "train.early_stopping_patience": None,
        "train.progress": False,
        "train.tensorboard": False,
        "train.num_threads": 1,
        "device": "cpu",
        "run_dir": str(tmp_path / "run"),
        **extra,
    }
    overrides = [f"{k}={'null' if v is None else v}" for k, v in values.items()]
    return load_config(ROOT / "configs" / "reviews" / "amazon.yaml", overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("classify")
    history = fit(config(tmp_path))
    return tmp_path / "run", history


def test_a_keyword_is_learned_and_gets_the_attention(trained):
    run_dir, history = trained
    assert history["val_macro_f1"][-1] == 1.0
    run = load_run(run_dir, device="cpu")
    metrics = run.evaluate("test")
    assert metrics["accuracy"] == 1.0 and metrics["macro_f1"] == 1.0 and "mae" not in metrics  # binary: not ordinal
    assert metrics["groups"] == 6 and -1 <= metrics["group_spearman"] <= 1
    assert (run_dir / "plots" / "confusion-test.png").is_file() and (run_dir / "plots" / "groups-test.png").is_file()
    (pred,) = run.predict(["battery sound excellent seller box"])
    assert pred.output == "pos" and set(pred.probabilities) == {"neg", "pos"}
    (explanation,) = run.explain(["battery sound excellent seller box"])
    keyword = [p for p in run.task.pieces("excellent")[1:] if p != "▁"]  # its pieces, without <s>
    top = explanation.key_tokens[int(explanation.summary[0].argmax())]
    assert top in keyword, (top, explanation.key_tokens)
    with pytest.raises(UserError, match="input 1 is empty"):
        run.predict(["  "])


def test_class_weights_change_the_loss_as_computed_by_hand(tmp_path):
    cfg = config(tmp_path, **{"data.class_weights": "balanced"})
    task = get_task("classify")(cfg)
    data = task.build_data(cfg)
    model = task.build_model(cfg, data)
    batch = next(data.train.batches(0))
    counts = task.class_counts.float()
    weight = counts.sum() / (2 * counts)  # scikit-learn's "balanced"
    logits = model(batch["tokens"]).float()
    per_example = F.cross_entropy(logits, batch["labels"], reduction="none")
    w = weight[batch["labels"]]
    expected = (per_example * w).sum() / w.sum()
    loss, _ = task.loss(model, batch)
    torch.testing.assert_close(loss, expected)
    assert counts[1] < counts[0] and weight[1] > 1 > weight[0]


def test_identical_texts_never_straddle_train_and_test(tmp_path):
    cfg = config(tmp_path, **{"data.folds": 5, "data.fold": 2})
    task = get_task("classify")(cfg)
    data = task.build_data(cfg)
    train_texts = {e.text for b in [data.train.examples] for e in b}
    test_texts = {e.text for e in data.splits["test"]}
    assert not train_texts & test_texts and not {e.text for e in data.splits["val"]} & test_texts
    folds = [split_examples(list(data.train.examples), cfg.data.model_copy(update={"fold": k}), 0)["test"]
             for k in range(5)]  # fmt: skip
    assert sum(len(f) for f in folds) == len(data.train.examples)  # every example in exactly one test fold
    with pytest.raises(ConfigError, match="data.fold"):
        split_examples([], cfg.data.model_copy(update={"fold": 5}), 0)


def test_expected_calibration_error_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1])
    # bins (0.8,0.867]… : conf 0.9 correct → |1−0.9|; conf 0.6 wrong → |0−0.6|; conf 0.7 correct → |1−0.7|
    assert expected_calibration_error(probs, labels) == pytest.approx((0.1 + 0.6 + 0.3) / 3)


def test_cli_predicts_a_file_to_csv_and_explains_with_colour_and_html(trained, tmp_path):
    from tests.conftest import run_cli

    run_dir, _ = trained
    reviews = tmp_path / "new.csv"
    reviews.write_text("Reviews,Other\nbattery excellent box,1\nsound charger day,2\n")
    out = tmp_path / "preds.csv"
    result = run_cli("predict", str(run_dir), "--input", str(reviews), "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["row", "text", "prediction", "score", "neg", "pos"]
    assert [(r[0], r[1], r[2]) for r in rows[1:]] == [
        ("1", "battery excellent box", "pos"),
        ("2", "sound charger day", "neg"),
    ]
    page = tmp_path / "why.html"
    explained = run_cli("predict", str(run_dir), "battery excellent box", "--explain", "--html", str(page))
    assert explained.returncode == 0, explained.stderr
    assert "→  pos" in explained.stdout and "excellent" in page.read_text()
    weights = {w.rsplit(":", 1)[0]: float(w.rsplit(":", 1)[1]) for w in explained.stdout.splitlines()[1].split("  ")}
    top = max(weights, key=weights.get)
    assert top and top in "excellent"  # the keyword's piece carries the most weight
    reviews.write_text("Reviews,Other\nfine,1\n,2\n")
    bad = run_cli("predict", str(run_dir), "--input", str(reviews), "--output", str(out))
    assert bad.returncode == 2 and "new.csv, line 3: no text in column 'Reviews'" in bad.stderr


def test_layer_wise_learning_rate_decay_scales_each_layer(tmp_path):
    cfg = config(tmp_path, **{"model.encoder.n_encoder_layers": 3, "finetune.layer_lr_decay": 0.5})
    task = get_task("classify")(cfg)
    model = task.build_model(cfg, task.build_data(cfg))
    groups = task.parameter_groups(model, 0.01)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["head.weight"])] == 1.0
    assert scale_of[id(named["encoder.layers.2.ff.linear1.weight"])] == 0.5
    assert scale_of[id(named["encoder.layers.0.ff.linear1.weight"])] == 0.125
    assert scale_of[id(named["encoder.embed.embedding.weight"])] == 0.0625
    assert len(scale_of) == len(named)  # every parameter in exactly one group
    decayed = {id(p) for g in groups if g["weight_decay"] for p in g["params"]}
    assert id(named["encoder.layers.0.ff.linear1.bias"]) not in decayed
    # The trainer multiplies the scheduled rate by each group's scale.
    optimizer = torch.optim.AdamW(groups, lr=1.0)
    for group in optimizer.param_groups:
        group["lr"] = 2e-3 * group.get("lr_scale", 1.0)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [1.25e-4, 2.5e-4, 5e-4, 1e-3, 2e-3]
