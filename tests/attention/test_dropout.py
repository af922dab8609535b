"""The uniform-draw dropout: the keep rate and scale of nn.Dropout, identity in eval mode."""

import pytest
import torch

from heedful.attention.dropout import Dropout, dropout


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keeps_one_minus_p_and_scales_like_nn_dropout(p):
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout(x, p, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - (1 - p)) < 0.005
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    assert abs(y.mean().item() - 1.0) < 0.01  # unbiased, as nn.Dropout


def test_eval_mode_and_zero_p_are_the_identity_and_gradients_flow_through_kept_units():
    layer = Dropout(0.3)
    x = torch.randn(4, 5, requires_grad=True)
    assert torch.equal(layer.eval()(x), x) and torch.equal(dropout(x, 0.0, True), x)
    y = layer.train()(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y != 0).float() / 0.7)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Dropout(1.0)
