"""A Linear and its ReLU in one kernel (heedful.nn.fused): the same outputs bit for bit as the
ReLU after the layer, taken for prepacked float32 and int8 layers, and not where hooks must run."""

import copy

import pytest
import torch
import torch.nn.functional as F

from heedful.models.transformer import FeedForward
from heedful.nn import packed
from heedful.nn.fused import linear_relu
from heedful.nn.int8 import int8_engine, quantize_int8
from heedful.nn.packed import packed_linears


def feed_forward() -> FeedForward:
    torch.manual_seed(0)
    ff = FeedForward(256, 1024, dropout=0.1, activation="relu").eval()
    with torch.no_grad():
        ff.linear1.bias.normal_()  # so that the ReLU cuts a good share of the outputs
    return ff


def counting_separate_relus(monkeypatch) -> list[str]:
    """Records every ReLU computed apart from a layer's kernel (``F.relu``)."""
    calls: list[str] = []
    original = F.relu

    def relu(x, *args, **kwargs):
        calls.append("separate")
        return original(x, *args, **kwargs)

    monkeypatch.setattr(F, "relu", relu)
    return calls


@torch.no_grad()
def test_int8_layers_apply_the_relu_in_their_kernel_with_the_same_result(monkeypatch):
    ff = quantize_int8(copy.deepcopy(feed_forward()), int8_engine(), {})
    x = torch.randn(40, 7, 256)
    separate = ff.linear2(F.relu(ff.linear1(x)))
    cut = (ff.linear1(x) <= 0).float().mean()
    assert 0.2 < cut < 0.8
    calls = counting_separate_relus(monkeypatch)
    assert torch.equal(linear_relu(ff.linear1, x), F.relu(ff.linear1(x)))
    calls.clear()
    assert torch.equal(ff(x), separate)
    assert calls == []  # the feed-forward took the fused kernel: no ReLU of its own


@pytest.mark.skipif(not packed.available(), reason="torch without oneDNN, or not an x86-64 CPU")
@torch.no_grad()
def test_prepacked_layers_apply_the_relu_in_their_kernel_with_the_same_result(monkeypatch):
    ff = feed_forward()
    x = torch.randn(40, 7, 256)
    with packed_linears(ff):
        separate = ff.linear2(F.relu(ff.linear1(x)))
        calls = counting_separate_relus(monkeypatch)
        fused = ff(x)
        assert calls == []
        assert torch.equal(linear_relu(ff.linear1, x), F.relu(ff.linear1(x)))
    assert torch.equal(fused, separate)
    torch.testing.assert_close(fused, ff.linear2(F.relu(ff.linear1(x))), atol=1e-5, rtol=1e-5)  # F.linear again
    assert not hasattr(ff.linear1, "forward_relu")  # the block closed: the layer is plain again


@torch.no_grad()
def test_plain_and_hooked_layers_and_training_take_the_separate_relu(monkeypatch):
    ff = quantize_int8(copy.deepcopy(feed_forward()), int8_engine(), {})
    x = torch.randn(5, 256)
    seen = []
    handle = ff.linear1.register_forward_hook(lambda module, args, out: seen.append(out.shape))
    calls = counting_separate_relus(monkeypatch)
    ff(x)
    assert seen == [(5, 1024)] and calls == ["separate"]  # the hook ran, so the layer's own call did
    handle.remove()
    plain = feed_forward()
    calls.clear()
    assert torch.equal(plain(x), plain.linear2(torch.relu(plain.linear1(x))))
    assert calls == ["separate"]
    plain.train()
    calls.clear()
    torch.manual_seed(1)
    plain(x)
    assert calls == []  # training with dropout: ReLU and dropout in one mask (relu_dropout), no F.relu
