"""Parallel co-attention (Lu et al. 2016, §3.3) against the paper's equations in column-vector form."""

import pytest
import torch

from heedful.attention import ParallelCoAttention

B, T_A, T_B, D, K = 3, 5, 7, 6, 4


def make(seed=0) -> ParallelCoAttention:
    torch.manual_seed(seed)
    return ParallelCoAttention(D, K).double()


def data(seed=1):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(B, T_A, D, generator=g, dtype=torch.float64)
    b = torch.randn(B, T_B, D, generator=g, dtype=torch.float64)
    a_len, b_len = torch.tensor([T_A, 3, 1]), torch.tensor([T_B, 7, 2])
    a_mask = torch.arange(T_A)[None, :] < a_len[:, None]
    b_mask = torch.arange(T_B)[None, :] < b_len[:, None]
    return a, b, a_mask, b_mask


def paper(module: ParallelCoAttention, a_example: torch.Tensor, b_example: torch.Tensor):
    """Lu et al. 2016 eq. (3)-(4) for one example, written with the paper's column vectors.

    Q = [q_1 … q_T] (d × T) is our ``a``; V = [v_1 … v_N] (d × N) is our ``b``.
        C   = tanh(Qᵀ W_b V)                      (T × N)
        H^v = tanh(W_v V + (W_q Q) C)             (k × N)
        H^q = tanh(W_q Q + (W_v V) Cᵀ)            (k × T)
        a^v = softmax(w_hvᵀ H^v),  a^q = softmax(w_hqᵀ H^q)
        v̂ = Σ_n a^v_n v_n,  q̂ = Σ_t a^q_t q_t
    """
    Q, V = a_example.T, b_example.T
    W_b = module.W_affinity.weight.T  # nn.Linear computes x Wᵀ, so the paper's W_b is its transpose
    W_q, W_v = module.W_a.weight, module.W_b.weight  # (k × d)
    w_hq, w_hv = module.w_a.weight.T, module.w_b.weight.T  # (k × 1)
    C = torch.tanh(Q.T @ W_b @ V)
    H_v = torch.tanh(W_v @ V + (W_q @ Q) @ C)
    H_q = torch.tanh(W_q @ Q + (W_v @ V) @ C.T)
    a_v = torch.softmax((w_hv.T @ H_v)[0], dim=0)
    a_q = torch.softmax((w_hq.T @ H_q)[0], dim=0)
    v_hat = V @ a_v
    q_hat = Q @ a_q
    return q_hat, v_hat, a_q, a_v, C


def test_shapes():
    out = make()(*data()[:2])
    assert out.a_summary.shape == (B, D) and out.b_summary.shape == (B, D)
    assert out.a_weights.shape == (B, T_A) and out.b_weights.shape == (B, T_B)
    assert out.affinity.shape == (B, T_A, T_B)


def test_matches_the_papers_equations_without_padding():
    module = make()
    a, b, _, _ = data()
    out = module(a, b)
    for i in range(B):
        q_hat, v_hat, a_q, a_v, C = paper(module, a[i], b[i])
        torch.testing.assert_close(out.affinity[i], C)
        torch.testing.assert_close(out.a_weights[i], a_q)
        torch.testing.assert_close(out.b_weights[i], a_v)
        torch.testing.assert_close(out.a_summary[i], q_hat)
        torch.testing.assert_close(out.b_summary[i], v_hat)


def test_padded_batch_equals_the_papers_equations_on_the_real_tokens():
    module = make()
    a, b, a_mask, b_mask = data()
    out = module(a, b, a_mask, b_mask)
    for i in range(B):
        n_a, n_b = int(a_mask[i].sum()), int(b_mask[i].sum())
        q_hat, v_hat, a_q, a_v, C = paper(module, a[i, :n_a], b[i, :n_b])
        torch.testing.assert_close(out.a_weights[i, :n_a], a_q)
        torch.testing.assert_close(out.b_weights[i, :n_b], a_v)
        torch.testing.assert_close(out.a_summary[i], q_hat)
        torch.testing.assert_close(out.b_summary[i], v_hat)
        torch.testing.assert_close(out.affinity[i, :n_a, :n_b], C)


def test_weights_sum_to_one_and_padding_gets_none():
    a, b, a_mask, b_mask = data()
    out = make()(a, b, a_mask, b_mask)
    ones = torch.ones(B, dtype=torch.float64)
    torch.testing.assert_close(out.a_weights.sum(-1), ones)
    torch.testing.assert_close(out.b_weights.sum(-1), ones)
    assert torch.all(out.a_weights[~a_mask] == 0) and torch.all(out.b_weights[~b_mask] == 0)
    assert torch.all(out.a_weights[a_mask] > 0) and torch.all(out.b_weights[b_mask] > 0)
    assert torch.all(out.affinity[~a_mask] == 0)
    assert torch.all(out.affinity.transpose(1, 2)[~b_mask] == 0)


def test_changing_padded_content_changes_nothing():
    module = make()
    a, b, a_mask, b_mask = data()
    out = module(a, b, a_mask, b_mask)
    g = torch.Generator().manual_seed(9)
    a2 = torch.where(a_mask[..., None], a, 50 * torch.randn(a.shape, generator=g, dtype=torch.float64))
    b2 = torch.where(b_mask[..., None], b, 50 * torch.randn(b.shape, generator=g, dtype=torch.float64))
    assert not torch.equal(a, a2) and not torch.equal(b, b2)
    out2 = module(a2, b2, a_mask, b_mask)
    for name in ("a_summary", "b_summary", "a_weights", "b_weights", "affinity"):
        torch.testing.assert_close(getattr(out2, name), getattr(out, name), msg=name)


def test_one_mask_only():
    module = make()
    a, b, a_mask, _ = data()
    out = module(a, b, a_mask=a_mask)
    torch.testing.assert_close(out.b_weights.sum(-1), torch.ones(B, dtype=torch.float64))
    assert torch.all(out.a_weights[~a_mask] == 0)


def test_gradcheck():
    module = make()
    a, b, a_mask, b_mask = data()
    a.requires_grad_()
    b.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: module(a, b, a_mask, b_mask)[:2], (a, b))


@pytest.mark.parametrize("d_hidden", [None, 3])
def test_hidden_width(d_hidden):
    module = ParallelCoAttention(D, d_hidden)
    assert module.W_a.out_features == (d_hidden or D)
    out = module(torch.randn(2, 4, D), torch.randn(2, 3, D))
    assert out.a_summary.shape == (2, D)
