"""explain.capture on small hand-made models built from heedful's attention modules."""

import pytest
import torch
from torch import nn

from heedful.attention import MultiHeadAttention, ParallelCoAttention
from heedful.attention import attend as attend_module
from heedful.explain import Captured, attention_modules, capture

D, H, B, T, T_MEM = 16, 4, 2, 6, 5


class TinyModel(nn.Module):
    """Two self-attention layers, one cross-attention and a co-attention, in nested containers."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([MultiHeadAttention(D, H) for _ in range(2)])
        self.decoder = nn.ModuleDict({"cross": MultiHeadAttention(D, H, kdim=8, vdim=8)})
        self.co = ParallelCoAttention(D, 8)
        self.head = nn.Linear(D, 3)

    def forward(self, x, memory, keep=None):
        for layer in self.layers:
            x = x + layer(x, key_padding_mask=keep, is_causal=True).output
        x = x + self.decoder["cross"](x, memory).output
        summary = self.co(x, x, keep, keep).a_summary
        return self.head(summary)


@pytest.fixture(autouse=True)
def fused_at_every_size(monkeypatch):
    """Let float32 take the fused kernel at these tiny sizes too (without capture), so the tests
    can tell the paths apart."""
    monkeypatch.setattr(attend_module, "CPU_FP32_MATH_MAX_SCORES", 0)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TinyModel()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, T, D, generator=g)
    memory = torch.randn(B, T_MEM, 8, generator=g)
    keep = torch.tensor([[1] * T, [1] * 4 + [0] * 2], dtype=torch.bool)
    return x, memory, keep


ATTENTION_NAMES = ["layers.0", "layers.1", "decoder.cross", "co"]


def test_attention_modules_are_found_by_path(model):
    assert list(attention_modules(model)) == ATTENTION_NAMES


def test_capture_names_weights_by_module_path(model, batch):
    x, memory, keep = batch
    with capture(model) as seen:
        model(x, memory, keep)
    assert isinstance(seen, Captured)
    assert sorted(seen) == sorted(ATTENTION_NAMES) and len(seen) == 4
    assert seen["layers.0"].shape == (B, H, T, T)
    assert seen["layers.1"].shape == (B, H, T, T)
    assert seen["decoder.cross"].shape == (B, H, T, T_MEM)
    assert set(seen["co"]) == {"a", "b", "affinity"}
    assert seen["co"]["a"].shape == (B, T) and seen["co"]["affinity"].shape == (B, T, T)
    # They are real attention distributions, masks applied.
    weights = seen["layers.0"]
    torch.testing.assert_close(weights.sum(-1), torch.ones(B, H, T))
    assert torch.equal(weights, weights.tril())  # causal
    assert not weights[1, ..., 4:].any()  # padded keys of sequence 1
    torch.testing.assert_close(seen["co"]["a"].sum(-1), torch.ones(B))


def test_captured_weights_are_the_ones_the_module_computes(model, batch):
    x, memory, keep = batch
    layer = model.layers[0]
    expected = layer(x, key_padding_mask=keep, is_causal=True, need_weights=True).weights
    with capture(model) as seen:
        model(x, memory, keep)
    torch.testing.assert_close(seen["layers.0"], expected, atol=0, rtol=0)


def test_outputs_are_the_same_with_and_without_capture(model, batch, functional):
    x, memory, keep = batch
    plain = model(x, memory, keep)
    fused_calls = functional.sdpa_calls
    assert fused_calls == 3  # without capture, float32 on CPU takes the fused path
    with capture(model):
        captured = model(x, memory, keep)
    assert functional.sdpa_calls == fused_calls  # with capture: the math path only
    torch.testing.assert_close(captured, plain, atol=1e-6, rtol=1e-6)


def test_modules_stop_capturing_on_exit(model, batch, functional):
    x, memory, keep = batch
    with capture(model) as seen:
        model(x, memory, keep)
    assert not any(m.capturing for m in attention_modules(model).values())
    model(x, memory, keep)  # after the block: fused again, and nothing more recorded
    assert functional.sdpa_calls == 3
    assert len(seen.calls("layers.0")) == 1


def test_modules_stop_capturing_after_an_exception(model, batch):
    x, memory, keep = batch
    with pytest.raises(RuntimeError, match="boom"), capture(model):
        assert all(m.capturing for m in attention_modules(model).values())
        raise RuntimeError("boom")
    assert not any(m.capturing for m in attention_modules(model).values())
    with capture(model) as seen:  # and capture works again
        model(x, memory, keep)
    assert len(seen) == 4


def test_nested_capture_raises_and_leaves_the_outer_one_working(model, batch):
    x, memory, keep = batch
    with capture(model) as seen:
        with pytest.raises(RuntimeError, match="already being captured"), capture(model):
            pass
        # Overlapping: a sub-model of the one being captured.
        with pytest.raises(RuntimeError, match=r"'0'.*nested"), capture(model.layers):
            pass
        model(x, memory, keep)
    assert len(seen) == 4
    assert not any(m.capturing for m in attention_modules(model).values())


def test_calls_records_every_call_in_order(model, batch):
    x, memory, keep = batch
    with capture(model) as seen:
        model(x, memory, keep)
        model(x[:1, :3], memory[:1], keep[:1, :3])
    first, second = seen.calls("layers.1")
    assert first.shape == (B, H, T, T) and second.shape == (1, H, 3, 3)
    assert seen["layers.1"] is second  # the mapping holds the most recent call
    assert len(seen.calls("co")) == 2
    assert seen.calls("not.a.module") == []
    seen.calls("layers.1").clear()  # a copy: the record itself is not changed
    assert len(seen.calls("layers.1")) == 2
    seen.clear()
    assert len(seen) == 0


def test_a_module_called_twice_in_one_forward_is_recorded_twice():
    attn = MultiHeadAttention(D, H)
    model = nn.Sequential(attn)
    with capture(model) as seen:
        x = torch.randn(1, 3, D)
        attn(attn(x).output)
    assert len(seen.calls("0")) == 2


def test_unknown_name_lists_what_was_captured(model, batch):
    x, memory, keep = batch
    with capture(model) as seen:
        model(x, memory, keep)
    with pytest.raises(KeyError, match=r"'layers\.7'.*layers\.0"):
        seen["layers.7"]


def test_model_without_attention_modules_is_refused():
    plain = nn.Sequential(nn.Linear(4, 4), nn.MultiheadAttention(4, 2))
    with pytest.raises(ValueError, match="Sequential contains no heedful attention modules"), capture(plain):
        pass


def test_capture_works_on_a_single_module():
    attn = MultiHeadAttention(D, H)
    with capture(attn) as seen:
        attn(torch.randn(1, 3, D))
    assert list(seen) == [""] and seen[""].shape == (1, H, 3, 3)


def test_weights_are_detached_by_default(model, batch):
    x, memory, keep = batch
    with capture(model) as seen:
        model(x.requires_grad_(), memory, keep)
    assert not seen["layers.0"].requires_grad
    assert not seen["co"]["a"].requires_grad


def test_detach_false_keeps_the_graph(model, batch):
    x, memory, keep = batch
    x = x.clone().requires_grad_()
    with capture(model, detach=False) as seen:
        model(x, memory, keep)
    weights = seen["layers.0"]
    assert weights.requires_grad and seen["co"]["b"].requires_grad
    weights[..., 0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_need_weights_still_returns_weights_during_capture():
    attn = MultiHeadAttention(D, H)
    x = torch.randn(1, 3, D)
    with capture(attn) as seen:
        assert attn(x).weights is None  # capture does not change what the caller gets back
        returned = attn(x, need_weights=True).weights
    assert torch.equal(returned, seen[""])


def test_two_threads_capturing_one_model_at_once_get_their_own_weights(model, batch):
    """A capture is per thread: both threads hold their capture open while the other runs the
    model, yet each sees only its own calls' weights, equal to a capture made alone."""
    import threading

    x, memory, keep = batch
    inputs = [(x[:1], memory[:1], keep[:1]), (x[1:, :4], memory[1:], keep[1:, :4])]  # different shapes
    alone = []
    for args in inputs:
        with capture(model) as seen:
            model(*args)
        alone.append({name: seen.calls(name) for name in seen})

    both_open, results, errors = threading.Barrier(2), [None, None], []

    def work(i: int) -> None:
        try:
            with capture(model) as seen:
                both_open.wait(timeout=10)  # the other thread's capture is open too
                model(*inputs[i])
                both_open.wait(timeout=10)  # …and it has run the model before either closes
            results[i] = {name: seen.calls(name) for name in seen}
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for got, want in zip(results, alone, strict=True):
        assert got.keys() == want.keys()
        for name in want:
            assert len(got[name]) == len(want[name]) == 1, name
            for a, b in zip(got[name], want[name], strict=True):
                if isinstance(b, dict):
                    for key in b:
                        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
                else:
                    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_capture_in_one_thread_leaves_another_threads_calls_alone(model, batch, functional):
    import threading

    x, memory, keep = batch
    result = {}
    with capture(model) as seen:
        t = threading.Thread(
            target=lambda: result.update(
                capturing=any(m.capturing for m in attention_modules(model).values()), out=model(x, memory, keep)
            )
        )
        t.start()
        t.join()
    assert result["capturing"] is False
    assert len(seen) == 0  # the other thread's call reported nothing here
    assert functional.sdpa_calls == 3  # and it took the fused path


def test_capture_only_some_modules_leaves_the_others_uncaptured_and_keeps_the_gradient(model, batch):
    """What alignment supervision uses: one module's weights, in the graph; the rest untouched."""
    x, memory, keep = batch
    with capture(model, detach=False, only=["decoder.cross"]) as seen:
        out = model(x, memory, keep)
        assert [name for name, m in attention_modules(model).items() if m.capturing] == ["decoder.cross"]
    assert list(seen) == ["decoder.cross"] and seen["decoder.cross"].shape == (B, H, T, T_MEM)
    with capture(model) as everything:
        torch.testing.assert_close(model(x, memory, keep), out)
    torch.testing.assert_close(seen["decoder.cross"].detach(), everything["decoder.cross"])
    seen["decoder.cross"][..., 0].sum().backward()  # the weights carry their gradient
    assert model.decoder["cross"].q_proj.weight.grad.abs().sum() > 0
    unknown = pytest.raises(ValueError, match="no attention module 'decoder.crosss'")
    with unknown, capture(model, only=["decoder.crosss"]):
        pass
