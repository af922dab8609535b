"""The weight average: the update rule by hand, and swapping the average in and out."""

import torch
from torch import nn

from heedful.train.ema import WeightAverage


def test_the_average_follows_the_update_rule_with_its_warm_up():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = WeightAverage(model, decay=0.9)
    expected = {n: t.clone() for n, t in model.state_dict().items()}
    for t in range(1, 40):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        ema.update(model)
        d = min(0.9, (1 + t) / (10 + t))
        for n, w in model.state_dict().items():
            expected[n] = d * expected[n] + (1 - d) * w
    for n in expected:
        torch.testing.assert_close(ema.shadow[n], expected[n], rtol=1e-6, atol=1e-6)


def test_swapped_in_evaluates_the_average_and_gives_the_trained_weights_back():
    model = nn.Linear(2, 1, bias=False)
    ema = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    trained = model.weight.clone()
    with ema.swapped_in(model):
        torch.testing.assert_close(model.weight, ema.shadow["weight"])
        assert not torch.equal(model.weight, trained)
    assert torch.equal(model.weight, trained)


def test_integer_buffers_are_left_out():
    model = nn.BatchNorm1d(4)
    ema = WeightAverage(model, decay=0.9)
    assert "num_batches_tracked" not in ema.names and "running_mean" in ema.names
