"""Shared fixtures. Tests run on one CPU thread: small models are faster that way and the
numbers are reproducible whatever else the machine is doing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from heedful.attention import multihead as multihead_module

torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
    """Stands in for ``torch.nn.functional`` inside heedful's multihead module, counting SDPA calls."""

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
    monkeypatch.setattr(multihead_module, "F", counting)
    return counting


@pytest.fixture
def configs_dir() -> Path:
    return Path(__file__).resolve().parents[1] / "configs"
