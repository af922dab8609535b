import re

import pytest

from heedful.config import RunConfig, TrainConfig, apply_overrides, validate
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


@pytest.mark.parametrize("value", ["inf", "-.inf", ".nan", "nan"])
def test_no_number_is_infinite_or_nan(configs_dir, value):
    """``decode.alpha=inf`` divided by zero deep inside the beam search; every section refuses it."""
    for key in ("train.lr", "decode.alpha"):
        with pytest.raises(ConfigError, match=rf"config key '{key}'.*finite number"):
            load_config(configs_dir / "dates.yaml", [f"{key}={value}"])


@pytest.mark.parametrize("key", ["decode.beam_size", "train.lr", "train.clip_grad_norm", "model.d_model"])
def test_true_or_false_is_not_a_number(configs_dir, key):
    """pydantic reads true as 1: ``--set decode.beam_size=true`` decoded greedily, saying nothing."""
    with pytest.raises(ConfigError, match=rf"config key '{key}': expected a number \(got True\)$"):
        load_config(configs_dir / "dates.yaml", [f"{key}=true"])
    cfg = load_config(configs_dir / "dates.yaml", ["train.compile=true", "train.clip_grad_norm=null"])
    assert cfg.train.compile is True and cfg.train.clip_grad_norm is None  # flags and null are untouched


@pytest.mark.parametrize(
    ("config", "override", "message"),
    [
        (
            "dates.yaml",
            "decode.explain_layer=2",
            r"decode\.explain_layer=2: the decoder has 2 layers \(0 to 1, or -2 to -1",
        ),
        ("dates.yaml", "decode.explain_layer=-3", r"decode\.explain_layer=-3: the decoder has 2 layers"),
        ("speech_digits.yaml", "decode.explain_layer=9", r"decode\.explain_layer=9: the encoder has \d layers"),
        ("speech_digits.yaml", "decode.explain_head=99", r"decode\.explain_head=99: the model has heads 0 to \d"),
        ("speech_digits.yaml", "decode.explain_head=-1", r"decode\.explain_head=-1: the model has heads 0 to \d"),
    ],
)
def test_the_layer_and_head_to_show_exist(configs_dir, config, override, message):
    """Taken modulo the depth, layer 10 of a 2-layer decoder showed layer 0 without a word."""
    with pytest.raises(ConfigError, match=rf"^{config_path(configs_dir, config)}: {message}"):
        load_config(configs_dir / config, [override])
    assert load_config(configs_dir / "dates.yaml", ["decode.explain_layer=-2"]).decode.explain_layer == -2


def config_path(configs_dir, name):
    return re.escape(str(configs_dir / name))


def test_a_section_or_pair_error_names_the_key_without_dumping_the_section(configs_dir):
    with pytest.raises(ConfigError, match=r"config key 'train\.betas': too few values \(nothing at position 2\)$"):
        load_config(configs_dir / "dates.yaml", ["train.betas=[0.9]"])
    with pytest.raises(ConfigError, match=r"config key 'model': d_model \(128\) must be divisible by n_heads \(3\)$"):
        load_config(configs_dir / "dates.yaml", ["model.n_heads=3"])  # a section's own check, its values not dumped


def test_the_length_penalty_is_bounded(configs_dir):
    assert load_config(configs_dir / "dates.yaml", ["decode.alpha=10"]).decode.alpha == 10
    with pytest.raises(ConfigError, match=r"config key 'decode\.alpha'.*less than or equal to 10"):
        load_config(configs_dir / "dates.yaml", ["decode.alpha=1e308"])  # overflowed ((5 + |y|) / 6)^alpha


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
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("task: dates\n# März\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.yaml line 2: not UTF-8 text \(byte 0xe4\)"):
        load_config(latin1)
    no_task = tmp_path / "no_task.yaml"
    no_task.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="missing config key 'task'"):
        load_config(no_task)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("task: juggling\n")
    with pytest.raises(ConfigError, match="unknown task 'juggling'"):
        load_config(unknown)


# A value each train field must refuse: out of its range where it has one, else of the wrong type.
BAD_TRAIN_VALUES = {
    "max_nonfinite_steps": 0,
    "compile": "sometimes",
    "epochs": 0,
    "steps_per_epoch": 0,
    "batch_size": 0,
    "grad_accum": 0,
    "lr": 0,
    "weight_decay": -0.1,
    "betas": [0.9],
    "schedule": "linear",
    "warmup_steps": -1,
    "min_lr_ratio": 1.5,
    "label_smoothing": 1.0,
    "clip_grad_norm": 0,
    "ema_decay": 1.0,
    "precision": "fp16",
    "deterministic": "sometimes",
    "monitor": ["val_loss"],
    "monitor_mode": "max_or_min",
    "early_stopping_patience": 0,
    "max_minutes": 0,
    "checkpoint_every": -1,
    "keep_checkpoints": 0,
    "log_every": 0,
    "eval_batch_size": 0,
    "tensorboard": "sometimes",
    "wandb": "sometimes",
    "progress": "sometimes",
    "num_threads": 0,
    "init_from": [1, 2],
}


def test_every_train_field_is_validated():
    # A new field needs a bad value here: the table covers every field of TrainConfig.
    assert set(BAD_TRAIN_VALUES) == set(TrainConfig.model_fields)
    for field, value in BAD_TRAIN_VALUES.items():
        with pytest.raises(ConfigError, match=rf"'train\.{field}[.']"):
            validate(RunConfig, {"task": "translate", "train": {field: value}})
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


def test_the_gpu_config_follows_its_learning_rate_rule(configs_dir):
    """configs/multi30k/transformer_gpu.yaml scales the CPU config's rate by √(batch ratio) and
    keeps its warm-up tokens, as its header says."""
    cpu = load_config(configs_dir / "multi30k" / "transformer.yaml")
    gpu = load_config(configs_dir / "multi30k" / "transformer_gpu.yaml")
    ratio = gpu.data.batch_tokens / cpu.data.batch_tokens
    assert ratio > 1 and gpu.data.pad_to_multiple == 8 and gpu.device == "cuda"
    assert gpu.train.lr == pytest.approx(cpu.train.lr * ratio**0.5)
    assert gpu.train.warmup_steps == round(cpu.train.warmup_steps / ratio)
    # Otherwise the same run: model, tokenizer, data files, decoding.
    assert gpu.model == cpu.model and gpu.data.tokenizer == cpu.data.tokenizer and gpu.decode == cpu.decode
    assert (gpu.data.train, gpu.data.test) == (cpu.data.train, cpu.data.test)


def test_the_scale_fields_are_set_from_the_command_line(configs_dir):
    overrides = ["train.compile=true", "train.max_nonfinite_steps=2", "data.pad_to_multiple=8"]
    cfg = load_config(configs_dir / "dates.yaml", overrides)
    assert (cfg.train.compile, cfg.train.max_nonfinite_steps, cfg.data.pad_to_multiple) == (True, 2, 8)
    with pytest.raises(ConfigError, match=r"config key 'data\.pad_to_multiple'"):
        load_config(configs_dir / "dates.yaml", ["data.pad_to_multiple=0"])


def test_numeric_class_names_are_the_names_of_numeric_labels(configs_dir):
    """``--set data.classes=[1,5]`` failed: 'Input should be a valid string (got 1)'."""
    cfg = load_config(configs_dir / "reviews" / "amazon.yaml", ["data.labels=as_is", "data.classes=[1, 5, pos]"])
    assert cfg.data.classes == ["1", "5", "pos"]
