"""Shared fixtures. Tests run on one CPU thread: small models are faster that way and the
numbers are reproducible whatever else the machine is doing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn.functional as F

from heedful.attention import attend as attend_module
from heedful.tasks import get_task
from heedful.train.checkpoint import list_checkpoints

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


# Whether the test being set up or run is marked `slow`: `run_cli` starts a process (about a second
# of imports), which the fast subset (`pytest -m "not slow"`, README) promises not to do.
_running_slow_test = True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    global _running_slow_test
    _running_slow_test = item.get_closest_marker("slow") is not None


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """``heedful ARGS`` as a user runs it, from the repository root, on one thread. Only in tests
    marked `slow`: a fixture or test of the fast subset that calls it fails."""
    if not _running_slow_test:
        command = " ".join(args[:1])
        raise AssertionError(f"run_cli starts `heedful {command}` in a process: mark the test @pytest.mark.slow")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "heedful.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def latest_checkpoint_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(list_checkpoints(run_dir / "checkpoints")[-1] / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Bit-identical: the same tensor names, every tensor equal."""
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def assert_same_latest_checkpoint(run_a: Path, run_b: Path) -> None:
    assert_same_weights(latest_checkpoint_weights(run_a), latest_checkpoint_weights(run_b))


def crash_translate_loss_at(monkeypatch, call: int) -> None:
    """Make the translate task's loss raise KeyboardInterrupt at its ``call``-th call — a run
    cut off mid-epoch. ``monkeypatch.undo()`` or a new setattr restores it."""
    task_class = get_task("translate")
    original_loss = task_class.loss
    calls = {"n": 0}

    def crashing_loss(self, model, batch):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original_loss(self, model, batch)

    monkeypatch.setattr(task_class, "loss", crashing_loss)


def tiny_dates_overrides(run_dir: Path, **extra: object) -> list[str]:
    """A dates run small enough to train in a couple of seconds."""
    values: dict[str, object] = {
        "run_dir": str(run_dir),
        "data.val_size": 32,
        "data.test_size": 32,
        "model.d_model": 32,
        "model.n_heads": 2,
        "model.n_encoder_layers": 1,
        "model.n_decoder_layers": 1,
        "model.d_ff": 64,
        "train.epochs": 2,
        "train.steps_per_epoch": 4,
        "train.batch_size": 8,
        "train.eval_batch_size": 16,
        "train.warmup_steps": 2,
        "train.schedule": "inverse_sqrt",
        "train.max_minutes": None,
        "train.progress": False,
        "train.tensorboard": False,
        "train.num_threads": 1,
        "device": "cpu",
    }
    values.update(extra)
    return [f"{k}={'null' if v is None else v}" for k, v in values.items()]


class CountingFunctional:
    """Stands in for ``torch.nn.functional`` inside heedful's attention kernel, counting SDPA calls."""

    def __init__(self):
        self.sdpa_calls = 0

    def __getattr__(self, name):
        return getattr(F, name)

    def scaled_dot_product_attention(self, *args, **kwargs):
        self.sdpa_calls += 1
        return F.scaled_dot_product_attention(*args, **kwargs)


@pytest.fixture
def functional(monkeypatch):
    """Counts how often the fused kernel runs: ``functional.sdpa_calls``."""
    counting = CountingFunctional()
    monkeypatch.setattr(attend_module, "F", counting)
    return counting


@pytest.fixture
def configs_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "configs"
