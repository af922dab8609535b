"""Masked-LM pretraining (tasks/mlm.py) and a classifier started from it: BERT's masking counted,
a corpus whose hidden words follow from their neighbours learned, and the classify run reusing
the pretrained pieces and encoder weights exactly."""

import csv
import math
import random
from pathlib import Path

import pytest
import torch

from heedful.data.tokenizers import N_SPECIALS
from heedful.errors import ConfigError, UserError
from heedful.runs import load_config, load_run
from heedful.tasks import get_task
from heedful.tasks.mlm import mask_tokens
from heedful.train import fit

ROOT = Path(__file__).resolve().parents[2]
# Each text is a stretch of this cycle, so a hidden word is fixed by the word before it.
CYCLE = ["phone", "screen", "battery", "camera", "case", "price", "seller", "box", "charger", "sound", "apps", "week"]


def write_cycle_reviews(path: Path, n: int = 1000, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["cat", "label", "review"])  # the Chinese file's columns
        for _ in range(n):
            start, length = rng.randrange(len(CYCLE)), rng.randint(6, 12)
            words = [CYCLE[(start + k) % len(CYCLE)] for k in range(length)]
            good = rng.random() < 0.4
            if good:
                words.insert(rng.randrange(len(words) + 1), "excellent")
            writer.writerow(["手机", 1 if good else 0, " ".join(words)])
    return path


def overrides(tmp_path: Path, run: str, **extra) -> list[str]:
    values = {
        "data.path": str(tmp_path / "reviews.csv"),
        "data.tokenizer.vocab_size": 300,
        "model.encoder.d_model": 32,
        "model.encoder.n_heads": 2,
        "model.encoder.n_encoder_layers": 1,
        "model.encoder.d_ff": 64,
        "model.encoder.dropout": 0.0,
        "model.encoder.max_len": 64,
        "data.max_tokens": 64,  # within the encoder's positions (a classifier refuses more)
        "train.lr": 3e-3,
        "train.warmup_steps": 10,
        "train.precision": "fp32",
        "train.early_stopping_patience": None,
        "train.max_minutes": None,
        "train.progress": False,
        "train.tensorboard": False,
        "train.num_threads": 1,
        "device": "cpu",
        "run_dir": str(tmp_path / run),
        **extra,
    }
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("mlm")
    write_cycle_reviews(tmp_path / "reviews.csv")
    cfg = load_config(
        ROOT / "configs" / "reviews" / "chinese_mlm.yaml",
        overrides(tmp_path, "mlm", **{"train.epochs": 25, "train.batch_size": 32, "masking.prob": 0.2}),
    )
    history = fit(cfg)
    return tmp_path, history


def test_masking_follows_berts_recipe():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(N_SPECIALS, 500, (64, 200), generator=g)
    tokens[:, 0] = 1  # <bos>
    tokens[:, 150:] = 0  # padding
    inputs, predict_at, targets = mask_tokens(tokens, 0.15, 500, mask_id=3, generator=g)
    assert not predict_at[:, 0].any() and not predict_at[:, 150:].any()  # specials never chosen
    chosen = predict_at.sum().item()
    assert chosen / (64 * 149) == pytest.approx(0.15, abs=0.01)
    assert torch.equal(targets, tokens[predict_at])
    masked = (inputs[predict_at] == 3).float().mean().item()
    kept = (inputs[predict_at] == tokens[predict_at]).float().mean().item()
    assert masked == pytest.approx(0.8, abs=0.02) and kept == pytest.approx(0.1 + 0.1 / 496, abs=0.02)
    assert torch.equal(inputs[~predict_at], tokens[~predict_at])  # the rest untouched
    assert (inputs[predict_at] >= N_SPECIALS).sum() + (inputs[predict_at] == 3).sum() == chosen  # no other specials
    # A short batch still predicts one piece, so its loss is defined.
    _, one, _ = mask_tokens(torch.tensor([[1, 7, 8]]), 1e-6, 500, mask_id=3, generator=g)
    assert one.sum() == 1


@pytest.mark.slow
def test_hidden_words_are_learned_from_their_neighbours(pretrained):
    tmp_path, history = pretrained
    # A hidden cycle word follows from the word before or after it (chance: 1 in 12); the inserted
    # "excellent" cannot be foreseen, nor a word whose neighbours are hidden too.
    assert history["val_accuracy"][-1] > 0.75 and history["val_accuracy"][0] < 0.4
    run = load_run(tmp_path / "mlm", device="cpu")
    with pytest.raises(UserError, match="only pretrains an encoder"):
        run.predict(["phone screen"])


@pytest.mark.slow
def test_a_classifier_starts_from_the_pretrained_pieces_and_encoder(pretrained):
    tmp_path, _ = pretrained
    cfg = load_config(
        ROOT / "configs" / "reviews" / "chinese.yaml",
        overrides(
            tmp_path, "classify", **{"model.pretrained": str(tmp_path / "mlm"), "data.tokenizer.vocab_size": 1000}
        ),
    )
    task = get_task("classify")(cfg)
    data = task.build_data(cfg)
    model = task.build_model(cfg, data)
    mlm = load_run(tmp_path / "mlm", device="cpu")
    # The same pieces (vocab_size 1000 asked here is ignored: the pretrained tokenizer is used) …
    text = "battery camera excellent case"
    assert task.encode(text) == mlm.task.encode(text) and task.vocab_size() == mlm.task.vocab_size()
    # … and the same encoder weights, every one of them.
    theirs = mlm.model.encoder.state_dict()
    ours = model.encoder.state_dict()
    assert ours.keys() == theirs.keys()
    for name, value in theirs.items():
        assert torch.equal(ours[name], value), name
    history = fit(cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 4})}))
    assert history["val_accuracy"][-1] == 1.0  # the keyword, as from scratch


@pytest.mark.slow
def test_a_classifier_split_otherwise_than_its_pretraining_is_warned_about(pretrained, capsys):
    tmp_path, _ = pretrained
    # Pretrained with seed 0; a split seed of 0 keeps the split whatever the training seed.
    for seed, split, warned in ((0, {}, False), (1, {}, True), (1, {"data.split_seed": 0}, False)):
        cfg = load_config(
            ROOT / "configs" / "reviews" / "chinese.yaml",
            overrides(tmp_path, "classify", **{"model.pretrained": str(tmp_path / "mlm"), "seed": seed, **split}),
        )
        capsys.readouterr()
        get_task("classify")(cfg).build_data(cfg)
        messages = [line for line in capsys.readouterr().err.splitlines() if line.startswith("heedful: warning: ")]
        assert any("seed differ" in m and "test texts" in m for m in messages) == warned, messages
    # The same file written another way is the same data: no warning about data.path.
    (tmp_path / "elsewhere").mkdir(exist_ok=True)
    same_file = tmp_path / "elsewhere" / ".." / "reviews.csv"
    cfg = load_config(
        ROOT / "configs" / "reviews" / "chinese.yaml",
        overrides(tmp_path, "classify", **{"model.pretrained": str(tmp_path / "mlm"), "data.path": str(same_file)}),
    )
    capsys.readouterr()
    get_task("classify")(cfg).build_data(cfg)
    assert not [
        line for line in capsys.readouterr().err.splitlines() if "heedful: warning:" in line and "differ" in line
    ]


def test_mlm_refuses_a_pretrained_start(tmp_path):
    write_cycle_reviews(tmp_path / "reviews.csv", n=50)
    cfg = load_config(
        ROOT / "configs" / "reviews" / "chinese_mlm.yaml", overrides(tmp_path, "mlm", **{"model.pretrained": "minilm"})
    )
    with pytest.raises(ConfigError, match="pretrains a Transformer encoder from scratch"):
        get_task("mlm")(cfg).build_data(cfg)


def test_mlm_reads_texts_without_labels(tmp_path, capsys):
    """It required a label column, and dropped the rows whose label did not parse, though it uses no labels."""
    rng = random.Random(0)
    path = tmp_path / "texts.jsonl"  # no label anywhere
    path.write_text("".join(f'{{"review": "{" ".join(rng.choices(CYCLE, k=8))}"}}\n' for _ in range(60)))
    values = {"data.path": str(path), "data.label_column": None, "model.pooling": "mean"}
    cfg = load_config(ROOT / "configs" / "reviews" / "chinese_mlm.yaml", overrides(tmp_path, "mlm", **values))
    data = get_task("mlm")(cfg).build_data(cfg)
    assert len(data.train.examples) + len(data.splits["val"]) + len(data.splits["test"]) == 60
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("heedful: warning: ")]
    assert warned == [
        "heedful: warning: config key 'model.pooling' (mean) is ignored: the mlm task predicts each hidden piece and "
        "pools nothing; set it in the classify run started from this one"
    ]
    with pytest.raises(ConfigError, match=r"config key 'data.label_column': a classifier learns from labels; name"):
        load_config(ROOT / "configs" / "reviews" / "chinese.yaml", overrides(tmp_path, "c", **values))


@pytest.mark.slow
def test_mlm_trains_on_texts_without_labels(tmp_path):
    path = tmp_path / "texts.csv"
    path.write_text("review\n" + "".join(f"{' '.join(CYCLE[k:] + CYCLE[:k])} {k}\n" for k in range(12)) * 3)
    values = {"data.path": str(path), "data.label_column": None, "data.group_column": None, "train.epochs": 1,
              "train.batch_size": 8}  # fmt: skip
    history = fit(load_config(ROOT / "configs" / "reviews" / "chinese_mlm.yaml", overrides(tmp_path, "mlm", **values)))
    assert math.isfinite(history["val_loss"][-1]) and (tmp_path / "mlm" / "model" / "spm.model").is_file()


def mlm_run(tmp_path: Path, **data) -> Path:
    """An mlm run's folder as a classifier starting from it reads it (config.yaml, model/config.json),
    from chinese_mlm.yaml with ``data`` changed; nothing trained."""
    from heedful.config import to_yaml
    from heedful.models.masked_lm import MaskedLanguageModel

    cfg = load_config(ROOT / "configs" / "reviews" / "chinese_mlm.yaml", overrides(tmp_path, "mlm", **data))
    (tmp_path / "mlm" / "model").mkdir(parents=True)
    (tmp_path / "mlm" / "config.yaml").write_text(to_yaml(cfg))
    (tmp_path / "mlm" / "model" / "config.json").write_text(f'{{"model_type": "{MaskedLanguageModel.model_type}"}}')
    return tmp_path / "mlm"


@pytest.mark.parametrize(
    ("theirs", "ours", "named"),
    [
        ({}, {}, []),
        ({"data.label_column": None}, {}, ["data.label_column"]),  # read without labels, bad-label rows stayed
        ({"data.text_column": "cat"}, {}, ["data.text_column"]),  # other texts
        ({"data.labels": "binary"}, {"data.labels": "stars5"}, ["data.labels"]),  # binary leaves 3 stars out
        ({"data.labels": "stars3"}, {"data.labels": "stars5"}, []),  # both keep every rating
        ({"data.classes": '["0","1","2"]'}, {}, ["data.classes"]),  # a label 2 was a row there, a bad row here
        ({"data.classes": '["1","0"]'}, {}, []),  # the same labels, numbered otherwise
        ({"data.classes": None}, {}, ["data.classes"]),  # any label was a row there
        ({"data.label_column": None, "data.classes": None}, {}, ["data.label_column"]),  # its labels unread
        ({"data.on_bad_row": "error", "data.group_column": None}, {}, []),  # they keep the same rows
    ],
)
def test_a_classifier_is_warned_of_each_setting_that_split_its_pretraining_otherwise(
    tmp_path, capsys, theirs, ours, named
):
    folder = mlm_run(tmp_path, **theirs)
    cfg = load_config(
        ROOT / "configs" / "reviews" / "chinese.yaml",
        overrides(tmp_path, "classify", **{"model.pretrained": str(folder), **ours}),
    )
    capsys.readouterr()
    get_task("classify")(cfg)._check_pretraining_split(cfg)
    err = capsys.readouterr().err
    if not named:
        assert err == ""
        return
    assert err == (
        f"heedful: warning: {folder / 'config.yaml'}: the pretraining split its data otherwise "
        f"({', '.join(named)} differ), so its training texts may include this run's test texts\n"
    )


def test_a_classifier_is_warned_when_its_pretraining_config_is_unreadable(tmp_path, capsys):
    folder = mlm_run(tmp_path)
    (folder / "config.yaml").unlink()
    cfg = load_config(
        ROOT / "configs" / "reviews" / "chinese.yaml",
        overrides(tmp_path, "classify", **{"model.pretrained": str(folder)}),
    )
    capsys.readouterr()
    get_task("classify")(cfg)._check_pretraining_split(cfg)
    assert capsys.readouterr().err == (
        f"heedful: warning: {folder / 'config.yaml'}: unreadable, so it is unknown which texts the pretraining saw\n"
    )
