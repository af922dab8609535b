import pytest

from heedful.config import TrainConfig, apply_overrides, validate
from heedful.errors import ConfigError
from heedful.runs import load_config


def test_overrides_are_parsed_as_yaml_values(configs_dir):
    cfg = load_config(
        configs_dir / "dates.yaml",
        ["train.lr=3e-4", "model.n_heads=8", "train.betas=[0.9, 0.99]", "train.wandb=false", "name=x"],
    )
    assert cfg.train.lr == 3e-4 and cfg.model.n_heads == 8 and cfg.train.betas == (0.9, 0.99)
    assert cfg.name == "x" and cfg.resolved_run_dir().name == "x"


def test_text_values_are_kept_as_typed():
    typed = ["run_dir=runs/exp #2", "name=exp #2", "data.path= my file.csv ", "a=[1, 2]", "b=null", "c='quoted'"]
    data = apply_overrides({}, [*typed, "d=true", "e=cuda:0"])
    assert data["run_dir"] == "runs/exp #2" and data["name"] == "exp #2" and data["data"]["path"] == "my file.csv"
    assert data["a"] == [1, 2] and data["b"] is None and data["c"] == "quoted" and data["d"] is True
    assert data["e"] == "cuda:0"
    assert apply_overrides({}, ["run_dir=runs/a: b", "x=null"]) == {"run_dir": "runs/a: b", "x": None}
    assert apply_overrides({}, ["run_dir=null"]) == {"run_dir": None}


def test_unknown_key_names_the_key_and_suggests(configs_dir):
    with pytest.raises(
        ConfigError, match=r"unknown config key 'train\.warmup_step' \(did you mean 'train\.warmup_steps'"
    ):
        load_config(configs_dir / "dates.yaml", ["train.warmup_step=1"])
    with pytest.raises(ConfigError, match=r"did you mean 'model\.n_heads'"):
        load_config(configs_dir / "dates.yaml", ["model.n_head=2"])


def test_wrong_type_names_the_key_and_value(configs_dir):
    with pytest.raises(ConfigError, match=r"config key 'train\.epochs'.*'many'"):
        load_config(configs_dir / "dates.yaml", ["train.epochs=many"])


def test_bad_override_syntax_and_sections():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"])


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nowhere.yaml: config file not found"):
        load_config(tmp_path / "nowhere.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: translate\ntrain:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad.yaml line \d+: invalid YAML"):
        load_config(bad)
    no_task = tmp_path / "no_task.yaml"
    no_task.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="missing config key 'task'"):
        load_config(no_task)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("task: juggling\n")
    with pytest.raises(ConfigError, match="unknown task 'juggling'"):
        load_config(unknown)


def test_every_train_field_is_validated():
    with pytest.raises(ConfigError, match=r"'train\.grad_accum'"):
        validate(
            type("C", (), {}) and __import__("heedful.config").config.RunConfig,
            {"task": "translate", "train": {"grad_accum": 0}},
        )
    assert TrainConfig().schedule == "inverse_sqrt"


def test_the_architecture_key_picks_the_model_section_and_errors_name_plain_keys(configs_dir):
    cfg = load_config(configs_dir / "multi30k" / "rnn_bahdanau.yaml", ["model.cell=lstm"])
    assert (cfg.model.arch, cfg.model.cell) == ("rnn", "lstm")
    assert load_config(configs_dir / "multi30k" / "transformer.yaml").model.arch == "transformer"  # the default
    typo = r"unknown config key 'model\.atention' \(did you mean 'model\.attention'\?\)"
    with pytest.raises(ConfigError, match=typo):
        load_config(configs_dir / "multi30k" / "rnn_bahdanau.yaml", ["model.atention=none"])
    with pytest.raises(ConfigError, match=r"config key 'model\.arch': 'lstm' is not one of 'transformer', 'rnn'"):
        load_config(configs_dir / "multi30k" / "rnn_bahdanau.yaml", ["model.arch=lstm"])
