"""The uniform-draw dropout: the keep rate and scale of nn.Dropout, identity in eval mode."""

import pytest
import torch

from heedful.attention.dropout import Dropout, dropout, keep_mask


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


def test_every_int16_lane_of_the_random_words_keeps_at_the_same_rate():
    """Four elements share one 64-bit draw; a biased lane (say a sign bit that is never set) would
    keep every fourth element at another rate."""
    torch.manual_seed(0)
    keep, rate = keep_mask((400_000,), 0.5)
    assert rate == 0.5
    per_lane = keep.view(-1, 4).float().mean(0)  # (4,)
    assert torch.all((per_lane - 0.5).abs() < 0.005), per_lane


def test_keep_rate_is_p_rounded_to_a_sixteenth_bit_and_the_masks_follow_the_seed():
    _, rate = keep_mask((10,), 0.2)
    assert rate == 1 - 13_107 / 65_536 and abs(rate - 0.8) < 2**-17
    assert keep_mask((3,), 0.999999)[1] == 1 / 65_536  # p < 1 always keeps something
    torch.manual_seed(5)
    first = keep_mask((1000,), 0.3)[0]
    torch.manual_seed(5)
    assert torch.equal(first, keep_mask((1000,), 0.3)[0])


def test_successive_masks_are_unrelated_draws():
    """Each call seeds its words from torch's generator, which moves on: a seed repeated (or one
    fixed stream) would give equal or shifted masks."""
    from heedful.attention.dropout import random_words

    torch.manual_seed(0)
    a, b = random_words(1000), random_words(1000)
    assert not torch.equal(a, b) and not torch.equal(a[1:], b[:-1])
    assert (a == b).float().mean() < 0.01
    bits = torch.stack([(a >> k) & 1 for k in range(64)])  # (64, 1000): every bit position is random
    assert torch.all((bits.float().mean(1) - 0.5).abs() < 0.08), bits.float().mean(1)
