"""A run's model folder records the sha256 of its weights in config.json, as a checkpoint's state.json
does: bytes changed inside the tensor data still parse, and only the sum tells them from good ones."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import pytest
import safetensors.torch

from heedful import cli
from heedful.errors import CheckpointError
from heedful.optimize import optimize
from heedful.runs import load_config, load_run
from heedful.train.init_from import load_initial_weights
from heedful.train.trainer import fit
from tests.conftest import ROOT, assert_same_weights, tiny_dates_overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny dates run (one epoch of four steps) and its int8 optimization, made once; tests copy them."""
    root = tmp_path_factory.mktemp("sums")
    fit(load_config(ROOT / "configs" / "dates.yaml", tiny_dates_overrides(root / "dates", **{"train.epochs": 1})))
    optimize(load_run(root / "dates", "cpu"), "int8", root / "dates-int8")
    return root


def recorded_and_actual(model_dir):
    recorded = json.loads((model_dir / "config.json").read_text())["sha256"]
    return recorded, {"model.safetensors": hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()}


@pytest.mark.parametrize("name", ["dates", "dates-int8"])
def test_a_saved_model_records_the_sha256_of_its_weights(trained, name):
    recorded, actual = recorded_and_actual(trained / name / "model")
    assert recorded == actual


def copy_of(trained, tmp_path, name="dates"):
    run = tmp_path / name
    shutil.copytree(trained / name, run)
    return run


def flip_a_byte_in_the_tensor_data(weights):
    """Change one bit halfway through the tensor data, past the JSON header: the file still parses."""
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + (len(data) - header) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    safetensors.torch.load_file(str(weights))  # still a valid safetensors file


def changed(weights):
    return f"{weights}: changed since it was written (its sha256 is not the one config.json recorded beside it); "


def test_a_byte_changed_in_the_weights_is_refused_and_the_checkpoint_the_message_names_restores_it(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    expected = load_run(run, "cpu").model.state_dict()
    weights = run / "model" / "model.safetensors"
    flip_a_byte_in_the_tensor_data(weights)
    with pytest.raises(CheckpointError) as caught:
        load_run(run, "cpu")
    kept = run / "checkpoints" / "step-4" / "model.safetensors"
    assert str(caught.value) == changed(weights) + f"checkpoint step-4 holds the same weights: cp {kept} {weights}"
    shutil.copy(kept, weights)  # as the message says
    assert_same_weights(load_run(run, "cpu").model.state_dict(), expected)


def test_without_a_checkpoint_of_the_same_bytes_the_message_says_to_restore_or_retrain(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    shutil.rmtree(run / "checkpoints")
    weights = run / "model" / "model.safetensors"
    flip_a_byte_in_the_tensor_data(weights)
    with pytest.raises(CheckpointError) as caught:
        load_run(run, "cpu")
    assert str(caught.value) == changed(weights) + (
        f"restore it from a copy, or train the run again (heedful train {run} --overwrite)"
    )


def test_heedful_predict_of_a_changed_model_is_one_line_and_exit_2(trained, tmp_path, monkeypatch, capsys):
    run = copy_of(trained, tmp_path)
    weights = run / "model" / "model.safetensors"
    flip_a_byte_in_the_tensor_data(weights)
    monkeypatch.setattr(sys, "argv", ["heedful", "predict", str(run), "1. Mai 2020", "--device", "cpu"])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    out = capsys.readouterr()
    assert exit_.value.code == 2 and out.out == ""
    kept = run / "checkpoints" / "step-4" / "model.safetensors"
    assert out.err == (
        f"heedful: error: {changed(weights)}checkpoint step-4 holds the same weights: cp {kept} {weights}\n"
    )


def test_a_model_folder_saved_before_the_sums_loads_unchecked(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    config_file = run / "model" / "config.json"
    config = json.loads(config_file.read_text())
    del config["sha256"]
    config_file.write_text(json.dumps(config, indent=2))
    assert_same_weights(load_run(run, "cpu").model.state_dict(), load_run(trained / "dates", "cpu").model.state_dict())


def test_an_int8_run_with_a_changed_byte_is_refused(trained, tmp_path):
    run = copy_of(trained, tmp_path, "dates-int8")
    load_run(run, "cpu")  # untouched, it loads
    weights = run / "model" / "model.safetensors"
    flip_a_byte_in_the_tensor_data(weights)
    with pytest.raises(CheckpointError) as caught:
        load_run(run, "cpu")
    assert str(caught.value) == changed(weights) + (
        "restore it from a copy, or run the heedful optimize that wrote it again (optimize.json says how)"
    )


def test_train_init_from_a_changed_model_is_refused(trained, tmp_path):
    run = copy_of(trained, tmp_path)
    weights = run / "model" / "model.safetensors"
    flip_a_byte_in_the_tensor_data(weights)
    model = load_run(trained / "dates", "cpu").model
    with pytest.raises(CheckpointError) as caught:
        load_initial_weights(model, run / "model")
    kept = run / "checkpoints" / "step-4" / "model.safetensors"
    assert str(caught.value) == (
        f"train.init_from: {changed(weights)}checkpoint step-4 holds the same weights: cp {kept} {weights}"
    )
