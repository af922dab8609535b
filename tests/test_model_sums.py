"""A run's model folder records the sha256 of its weights in config.json, as a checkpoint's state.json
does: bytes changed inside the tensor data still parse, and only the sum tells them from good ones."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

from heedful.optimize import optimize
from heedful.runs import load_config, load_run
from heedful.train.trainer import fit
from tests.conftest import ROOT, tiny_dates_overrides


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
