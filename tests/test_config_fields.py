"""``describe_fields`` and ``heedful config``: every key a config has, as ``--set`` names it."""

from __future__ import annotations

import yaml

from heedful.cli import _flow
from heedful.config import REQUIRED, describe_fields, to_yaml
from heedful.runs import load_config
from tests.conftest import ROOT
from tests.test_cli_refusals import heedful

# One config of each task, and the RNN translator (its model section is another class).
CONFIGS = ["dates.yaml", "multi30k/rnn_bahdanau.yaml", "digits_gan.yaml", "speech_digits.yaml",
           "reviews/amazon.yaml", "reviews/chinese_mlm.yaml"]  # fmt: skip


def paths(data: dict, prefix: str = "") -> set[str]:
    """Every key path of a config's YAML, down to the values inside mappings."""
    found: set[str] = set()
    for name, value in data.items():
        found.add(f"{prefix}{name}")
        if isinstance(value, dict):
            found |= paths(value, f"{prefix}{name}.")
    return found


def test_every_key_of_every_task_is_listed_once_and_sets_its_own_value():
    for name in CONFIGS:
        cfg = load_config(ROOT / "configs" / name)
        rows = describe_fields(cfg)
        keys = [row.key for row in rows]
        assert len(keys) == len(set(keys)), name
        written = paths(yaml.safe_load(to_yaml(cfg)))
        assert set(keys) <= written, name  # every key listed is one of the config's ...
        for path in written:  # ... and every value of the config is under a key listed (a mapping is one)
            assert any(path == key or path.startswith(f"{key}.") or key.startswith(f"{path}.") for key in keys), path
        # Each key set to the value shown for it, all at once, leaves the config as it was: the keys
        # are --set's own and the values read back as they were.
        again = load_config(ROOT / "configs" / name, [f"{row.key}={_flow(row.value)}" for row in rows])
        assert to_yaml(again) == to_yaml(cfg), name


def test_every_key_of_every_task_says_what_it_does():
    # A field added without Field(description=...) shows a blank in heedful config --fields.
    for name in CONFIGS:
        blank = [
            row.key for row in describe_fields(load_config(ROOT / "configs" / name)) if not row.description.strip()
        ]
        assert blank == [], name


def test_rows_say_value_default_kind_and_description():
    rows = {row.key: row for row in describe_fields(load_config(ROOT / "configs" / "dates.yaml"))}
    epochs = rows["train.epochs"]
    assert (epochs.value, epochs.default, epochs.kind) == (12, 10, "int ≥ 1")
    assert rows["train.schedule"].kind == "inverse_sqrt|cosine|constant"
    assert rows["train.max_minutes"].kind == "number > 0, or null"
    assert rows["train.betas"].value == [0.9, 0.98] and rows["train.betas"].kind == "[number, number]"
    assert rows["model.arch"].kind == "transformer|rnn"  # the key that picks the section: every choice
    assert rows["model.activation"].kind != "transformer|rnn"  # other choices in the section are their own
    assert rows["decode.beam_size"].description == "1: greedy (KV cache); more: beam search"
    supervision = rows["alignment_supervision"]  # a section left out: one row naming its keys
    assert supervision.value is None and supervision.description.endswith("(a section: path, layer, head, weight)")
    assert all(row.default is not REQUIRED for row in rows.values())


def test_config_command_prints_the_config_training_reads(monkeypatch, capsys):
    path = str(ROOT / "configs" / "dates.yaml")
    code, out, err = heedful(monkeypatch, capsys, "config", path, "--set", "train.epochs=3")
    assert (code, err) == (0, "")
    assert yaml.safe_load(out) == yaml.safe_load(to_yaml(load_config(path, ["train.epochs=3"])))

    code, out, err = heedful(monkeypatch, capsys, "config", path, "--fields", "--set", "decode.beam_size=4")
    assert (code, err) == (0, "")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert len(lines) == len(describe_fields(load_config(path)))
    width = len(max(lines, key=len))
    assert lines["decode.beam_size"] == (
        f"{'decode.beam_size':<{width}}  4  (int ≥ 1; default 1)  1: greedy (KV cache); more: beam search"
    )
    assert lines["train.grad_accum"] == f"{'train.grad_accum':<{width}}  1  (int ≥ 1)  micro-batches per optimizer step"

    code, out, err = heedful(monkeypatch, capsys, "config", path, "--set", "train.epoch=3")
    assert (code, out) == (2, "")
    assert err == f"heedful: error: {path}: unknown config key 'train.epoch' (did you mean 'train.epochs'?)\n"
