"""smoothed_cross_entropy and projected_cross_entropy against PyTorch's label-smoothed cross-entropy:
loss, gradient, argmax."""

import math

import pytest
import torch
import torch.nn.functional as F

import heedful.nn.losses as losses
from heedful.nn.losses import projected_cross_entropy, smoothed_cross_entropy


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 2 rows for V = 50, so a 7-row batch takes 4 blocks, the last one short."""
    monkeypatch.setattr(losses, "CPU_BLOCK_VALUES", 100)


def reference(logits, gold, smoothing):
    z = logits.detach().clone().requires_grad_()
    loss = F.cross_entropy(z.float(), gold, label_smoothing=smoothing)
    loss.backward()
    return loss, z.grad, z.float().argmax(-1)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_fp32_loss_gradient_and_argmax_equal_pytorch(small_blocks, smoothing):
    torch.manual_seed(0)
    logits = (torch.randn(7, 50) * 3).requires_grad_()
    gold = torch.randint(0, 50, (7,))
    want_loss, want_grad, want_argmax = reference(logits, gold, smoothing)
    before = logits.detach().clone()
    loss, predicted = smoothed_cross_entropy(logits, gold, smoothing)
    (3.0 * loss).backward()  # the upstream gradient scales the result
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=1e-6)
    torch.testing.assert_close(logits.grad, 3.0 * want_grad, rtol=1e-5, atol=1e-8)
    assert torch.equal(predicted, want_argmax)
    assert torch.equal(logits.detach(), before)  # the caller's fp32 logits, read in place, are left as they were


def test_bf16_gradient_is_pytorchs_rounded_to_bf16_even_at_a_confident_gold(small_blocks):
    torch.manual_seed(1)
    logits = torch.randn(7, 50) * 2
    gold = torch.randint(0, 50, (7,))
    logits[torch.arange(7), gold] = 9.0  # p(gold) ≈ 0.99: p − (1 − ε) cancels in the gradient
    logits = logits.bfloat16().requires_grad_()
    want_loss, want_grad, _ = reference(logits, gold, 0.1)  # fp32 maths, grad cast to bf16 once
    loss, _ = smoothed_cross_entropy(logits, gold, 0.1)
    loss.backward()
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, want_loss, rtol=0, atol=1e-6)
    # Within one bf16 rounding of the value (2⁻⁸ relative) everywhere, the gold entries included.
    gold_mine, gold_want = logits.grad[torch.arange(7), gold].float(), want_grad[torch.arange(7), gold].float()
    torch.testing.assert_close(gold_mine, gold_want, rtol=2**-8, atol=0)
    torch.testing.assert_close(logits.grad.float(), want_grad.float(), rtol=2**-7, atol=1e-9)


def test_bad_shapes_and_smoothing_are_named():
    with pytest.raises(ValueError, match=r"logits must be \(N, V\) and gold \(N,\)"):
        smoothed_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"label smoothing must be in \[0, 1\]"):
        smoothed_cross_entropy(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), 1.5)
    with pytest.raises(ValueError, match="at least one row"):
        smoothed_cross_entropy(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))


def test_attention_cross_entropy_is_the_hand_computed_value():
    """Garg et al.'s −Σ g log a, averaged over the rows with links; a row without links is ignored."""
    from heedful.nn.losses import attention_cross_entropy

    weights = torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2]]])  # (1, T=3, S=3)
    gold = torch.tensor([[[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])  # row 1: no links
    # row 0: −(½ log ½ + ½ log ¼) = 1.5 log 2; row 2: −log 0.6; two supervised rows
    want = (1.5 * math.log(2) - math.log(0.6)) / 2
    assert float(attention_cross_entropy(weights, gold)) == pytest.approx(want, rel=1e-6)
    assert float(attention_cross_entropy(weights, torch.zeros_like(gold))) == 0.0
    zero = torch.tensor([[[0.0, 1.0]]])  # an attention that underflowed: large, finite
    assert math.isfinite(float(attention_cross_entropy(zero, torch.tensor([[[1.0, 0.0]]]))))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_projected_loss_and_both_gradients_equal_pytorchs_projection_then_loss(small_blocks, smoothing):
    torch.manual_seed(2)
    hidden, weight = torch.randn(7, 6, requires_grad=True), torch.randn(50, 6, requires_grad=True)
    gold = torch.randint(0, 50, (7,))
    h, w = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    z = h @ w.T
    want = F.cross_entropy(z, gold, label_smoothing=smoothing)
    (3.0 * want).backward()
    loss, predicted = projected_cross_entropy(hidden, weight, gold, smoothing)
    (3.0 * loss).backward()  # the upstream gradient reaches both inputs
    torch.testing.assert_close(loss, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(hidden.grad, h.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, w.grad, rtol=1e-5, atol=1e-7)
    assert torch.equal(predicted, z.argmax(-1))
    assert torch.equal(hidden, h) and torch.equal(weight, w)  # the inputs are left as they were


def unfused_and_projected(rows: int, vocab: int, dtype: torch.dtype, upstream: float = 1.0):
    """Under ``dtype`` autocast, nn.Linear then smoothed_cross_entropy, and projected_cross_entropy,
    on the same random states and weight: (loss, argmax, states' grad, weight's grad) for each."""
    torch.manual_seed(rows)
    hidden, weight = torch.randn(rows, 8), torch.randn(vocab, 8)
    gold = torch.randint(0, vocab, (rows,))
    results = []
    for fused in (False, True):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=dtype):
            if fused:
                loss, predicted = projected_cross_entropy(h, w, gold, 0.1)
            else:
                loss, predicted = smoothed_cross_entropy(F.linear(h, w), gold, 0.1)
        (upstream * loss).backward()
        results.append((loss, predicted, h.grad, w.grad))
    return results


def test_under_bf16_autocast_it_is_the_linear_then_the_loss_to_the_bit(small_blocks):
    """The logits, their gradient and both matmuls in bf16 as autocast's nn.Linear computes them;
    the gradients come back in the parameters' fp32."""
    (want, want_predicted, want_h, want_w), (loss, predicted, grad_h, grad_w) = unfused_and_projected(
        9, 50, torch.bfloat16
    )
    assert torch.equal(loss, want) and torch.equal(predicted, want_predicted)
    assert grad_h.dtype == grad_w.dtype == torch.float32
    assert torch.equal(grad_h, want_h) and torch.equal(grad_w, want_w)


def test_rows_rounded_up_for_the_cpu_kernels_change_no_bit():
    """In bf16 on CPU the projection's matmuls run on rows rounded up (oneDNN builds a kernel per
    new shape, and the count of real target tokens is new nearly every batch): zero states below
    the real ones, and loss, argmax and both gradients still the unfused pair's, to the bit."""
    import heedful.nn.losses as losses

    cpu = torch.device("cpu")
    assert [losses._matmul_rows(n, cpu, torch.bfloat16) for n in (7, 63, 64, 1001, 3979, 4096)] == [
        7, 63, 64, 1008, 4032, 4096
    ]  # fmt: skip
    assert losses._matmul_rows(1001, cpu, torch.float32) == 1001  # fp32 runs on MKL: no kernel per shape
    losses.SPARE_LOGITS.clear()
    (want, want_predicted, want_h, want_w), (loss, predicted, grad_h, grad_w) = unfused_and_projected(
        1001, 50, torch.bfloat16
    )
    assert losses.SPARE_LOGITS._spare.numel() == 1008 * 50  # the padded rows were computed
    assert torch.equal(loss, want) and torch.equal(predicted, want_predicted)
    assert grad_h.shape == (1001, 8) and torch.equal(grad_h, want_h) and torch.equal(grad_w, want_w)


def test_projected_loss_without_gradients_and_its_bad_shapes():
    torch.manual_seed(4)
    hidden, weight, gold = torch.randn(5, 4), torch.randn(30, 4), torch.randint(0, 30, (5,))
    with torch.no_grad():
        loss, _ = projected_cross_entropy(hidden, weight, gold, 0.1)
    torch.testing.assert_close(loss, F.cross_entropy(hidden @ weight.T, gold, label_smoothing=0.1), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"hidden must be \(N, D\), weight \(V, D\) and gold \(N,\)"):
        projected_cross_entropy(hidden, torch.randn(30, 3), gold)
    with pytest.raises(ValueError, match="at least one row"):
        projected_cross_entropy(hidden[:0], weight, gold[:0])


def test_the_logits_matrix_is_reused_across_steps_and_a_retained_graph_cannot_read_a_reused_one():
    """After a backward the (N, V) matrix is kept for the next forward (no fresh pages to map on
    CPU); a graph backpropagated twice (retain_graph) across a later forward is refused by
    autograd rather than given a gradient from another batch's matrix."""
    import heedful.nn.losses as losses

    torch.manual_seed(5)
    hidden, weight = torch.randn(30, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
    gold = torch.randint(0, 50, (30,))
    loss, _ = projected_cross_entropy(hidden, weight, gold, 0.1)
    loss.backward(retain_graph=True)
    spare = losses.SPARE_LOGITS._spare
    assert spare is not None and spare.numel() >= 30 * 50
    first = hidden.grad.clone()
    hidden.grad = None
    again, _ = projected_cross_entropy(hidden[:20], weight, gold[:20], 0.1)  # a smaller batch: the same memory
    assert losses.SPARE_LOGITS._spare is None  # taken
    again.backward()
    assert losses.SPARE_LOGITS._spare.data_ptr() == spare.data_ptr()
    hidden.grad = None
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    fresh, _ = projected_cross_entropy(hidden, weight, gold, 0.1)
    fresh.backward()  # the reused matrix gives the same gradient as the first, fresh one
    torch.testing.assert_close(hidden.grad, first, rtol=0, atol=0)


def test_in_float16_a_loss_scaled_gradient_is_the_unfused_one():
    """A GradScaler-sized upstream gradient must reach the fp16 gradient before it is rounded:
    (softmax − ε/V)/N alone underflows float16."""
    (_, _, want_h, want_w), (_, _, grad_h, grad_w) = unfused_and_projected(4000, 300, torch.float16, 65536.0)
    assert torch.equal(grad_h, want_h) and torch.equal(grad_w, want_w)
    assert (grad_w != 0).float().mean() > 0.99
