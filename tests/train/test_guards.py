"""NaN/Inf guards in the trainer: a step whose loss or gradient is not finite is skipped with a
warning, and ``train.max_nonfinite_steps`` of them in a row stop the run, keeping its last good
checkpoint. Driven through the toy task (tests/toy_task.py): one linear layer, no randomness."""

from __future__ import annotations

import importlib

import pytest
import torch

from heedful.config import validate
from heedful.tasks import registry
from heedful.train import fit
from heedful.train.checkpoint import list_checkpoints
from heedful.train.trainer import TrainingDiverged
from tests.conftest import assert_same_weights, latest_checkpoint_weights


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry.MODULES, "toy", "tests.toy_task")
    module = importlib.import_module("tests.toy_task")
    monkeypatch.setitem(registry.TASKS, "toy", module.ToyTask)
    return module


def toy_config(toy, run_dir, **train):
    train = {"epochs": 2, "lr": 0.1, "batch_size": 64, "schedule": "constant", "warmup_steps": 0, "progress": False,
             "tensorboard": False, "max_minutes": None, "num_threads": 1, "checkpoint_every": 1,
             "keep_checkpoints": 100, **train}  # fmt: skip
    return validate(toy.ToyConfig, {"task": "toy", "run_dir": str(run_dir), "device": "cpu", "train": train})


def spoil_loss_at(monkeypatch, toy, calls: set[int], how: str) -> None:
    """The toy loss at the given calls (1-based): NaN itself, or finite with an infinite gradient."""
    original, seen = toy.ToyTask.loss, {"n": 0}

    def loss(self, model, batch):
        seen["n"] += 1
        value, stats = original(self, model, batch)
        if seen["n"] in calls:
            if how == "nan-loss":
                value = value * float("nan")
            else:  # the loss stays finite; its gradient does not
                value.register_hook(lambda grad: grad * float("inf"))
        return value, stats

    monkeypatch.setattr(toy.ToyTask, "loss", loss)


def drop_batches(monkeypatch, toy, dropped: set[int]) -> None:
    """Leave the given batches (0-based over the whole run, 8 per epoch) out of training."""
    original, seen = toy.Numbers.batches, {"n": -1}

    def batches(self, epoch):
        for batch in original(self, epoch):
            seen["n"] += 1
            if seen["n"] not in dropped:
                yield batch

    monkeypatch.setattr(toy.Numbers, "batches", batches)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["nan-loss", "inf-gradient"])
def test_a_nonfinite_step_is_skipped_as_if_its_batch_never_came(toy, tmp_path, monkeypatch, capsys, how):
    spoil_loss_at(monkeypatch, toy, {3, 11}, how)  # batch 3 of epoch 1, batch 3 of epoch 2
    history = fit(toy_config(toy, tmp_path / "spoilt"))
    err = capsys.readouterr().err
    assert err.count("heedful: warning: step 3 skipped: the loss or a gradient is NaN or infinite (1 in a row") == 1
    assert err.count("heedful: warning: step 10 skipped") == 1
    assert [row["step"] for row in history.epochs] == [7, 14]  # 8 batches an epoch, one step skipped in each

    monkeypatch.undo()
    toy = importlib.import_module("tests.toy_task")
    monkeypatch.setitem(registry.TASKS, "toy", toy.ToyTask)
    drop_batches(monkeypatch, toy, {2, 10})
    clean = fit(toy_config(toy, tmp_path / "dropped"))
    # Weights, optimizer moments and schedule untouched by the spoilt step: the same run exactly.
    assert_same_weights(latest_checkpoint_weights(tmp_path / "spoilt"), latest_checkpoint_weights(tmp_path / "dropped"))
    assert history["train_loss"] == pytest.approx(clean["train_loss"], abs=1e-6)  # the spoilt batch not counted


def test_too_many_nonfinite_steps_in_a_row_stop_training_keeping_the_last_good_checkpoint(toy, tmp_path, monkeypatch):
    spoil_loss_at(monkeypatch, toy, set(range(5, 100)), "nan-loss")
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as stopped:
        fit(toy_config(toy, run_dir, max_nonfinite_steps=3))
    message = str(stopped.value)
    assert "\n" not in message
    assert message == (
        "training stopped at step 4: the loss or a gradient was NaN or infinite 3 steps in a row; "
        f"the last good checkpoint is {run_dir / 'checkpoints' / 'step-4'}; lower train.lr or set train.clip_grad_norm"
    )
    last = list_checkpoints(run_dir / "checkpoints")[-1]
    assert last.name == "step-4"
    weights = latest_checkpoint_weights(run_dir)
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_the_limit_is_a_config_key(toy, tmp_path):
    from heedful.errors import ConfigError

    with pytest.raises(ConfigError, match="train.max_nonfinite_steps"):
        toy_config(toy, tmp_path, max_nonfinite_steps=0)
