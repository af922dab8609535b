import math

import pytest

from heedful.train.schedules import lr_at


def test_warmup_is_linear_to_the_peak():
    assert lr_at(1, lr=1.0, schedule="inverse_sqrt", warmup=100, total_steps=1000) == pytest.approx(0.01)
    assert lr_at(50, lr=1.0, schedule="cosine", warmup=100, total_steps=1000) == pytest.approx(0.5)
    assert lr_at(100, lr=2.0, schedule="inverse_sqrt", warmup=100, total_steps=1000) == pytest.approx(2.0)


def test_inverse_sqrt_halves_at_four_times_warmup():
    assert lr_at(400, lr=1.0, schedule="inverse_sqrt", warmup=100, total_steps=1000) == pytest.approx(0.5)


def test_cosine_ends_at_min_ratio_and_passes_the_midpoint():
    kw = dict(lr=1.0, schedule="cosine", warmup=100, total_steps=1100, min_lr_ratio=0.1)
    assert lr_at(1100, **kw) == pytest.approx(0.1)
    assert lr_at(600, **kw) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_at(5000, **kw) == pytest.approx(0.1)  # past the end it stays at the floor


def test_constant_and_unknown():
    assert lr_at(10_000, lr=3e-4, schedule="constant", warmup=10, total_steps=10) == 3e-4
    with pytest.raises(ValueError):
        lr_at(1, lr=1.0, schedule="nope", warmup=0, total_steps=1)
