"""MultiHeadAttention: agrees with torch.nn.MultiheadAttention on both paths, masks hold, the path
policy is followed."""

import pytest
import torch
from torch import nn

from heedful.attention import GeneralScore, MultiHeadAttention, causal_mask, prefer_fused
from heedful.attention import attend as attend_module

D, H = 16, 4
B, T_Q, T_K = 3, 5, 7
TOL = {"atol": 1e-5, "rtol": 1e-5}


# ------------------------------------------------------------------------------------------ helpers
def pair(kdim=None, vdim=None, seed=0):
    """Our module and torch's with the same weights (random biases, so the bias copy is tested)."""
    torch.manual_seed(seed)
    ours = MultiHeadAttention(D, H, kdim=kdim, vdim=vdim)
    theirs = nn.MultiheadAttention(D, H, kdim=kdim, vdim=vdim, batch_first=True)
    with torch.no_grad():
        for p in ours.parameters():
            if p.dim() == 1:
                p.normal_(std=0.1)
        if theirs._qkv_same_embed_dim:  # torch packs q, k, v into one (3D, D) matrix
            theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        else:
            theirs.q_proj_weight.copy_(ours.q_proj.weight)
            theirs.k_proj_weight.copy_(ours.k_proj.weight)
            theirs.v_proj_weight.copy_(ours.v_proj.weight)
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    return ours, theirs


def param_grads(module) -> list[torch.Tensor]:
    """Gradients in a common order: q/k/v weights, q/k/v biases, out weight, out bias."""
    if isinstance(module, nn.MultiheadAttention):
        if module._qkv_same_embed_dim:
            weights = [module.in_proj_weight.grad]
        else:
            weights = [module.q_proj_weight.grad, module.k_proj_weight.grad, module.v_proj_weight.grad]
        return [*weights, module.in_proj_bias.grad, module.out_proj.weight.grad, module.out_proj.bias.grad]
    projections = (module.q_proj, module.k_proj, module.v_proj)
    weights = (
        [torch.cat([p.weight.grad for p in projections])]
        if module.kdim == module.vdim == module.d_model
        else [p.weight.grad for p in projections]
    )
    bias = torch.cat([p.bias.grad for p in projections])
    return [*weights, bias, module.out_proj.weight.grad, module.out_proj.bias.grad]


def inputs(kind: str, kdim=D, vdim=D, seed=1):
    g = torch.Generator().manual_seed(seed)
    query = torch.randn(B, T_Q if kind != "self" else T_K, D, generator=g)
    if kind == "self":
        return query, None, None
    key = torch.randn(B, T_K, kdim, generator=g)
    value = key if kind == "cross" and kdim == vdim else torch.randn(B, T_K, vdim, generator=g)
    return query, key, value


def masks(kind: str, t_q: int, t_k: int):
    """Our keyword arguments and nn.MultiheadAttention's, for the same masking."""
    ours, theirs = {}, {}
    if "padding" in kind:
        lengths = torch.tensor([t_k, t_k - 2, 3])
        keep = torch.arange(t_k)[None, :] < lengths[:, None]  # (B, T_k), True = real token
        ours["key_padding_mask"], theirs["key_padding_mask"] = keep, ~keep
    if "causal" in kind:
        ours["is_causal"] = True
        theirs["attn_mask"] = ~causal_mask(t_q, t_k)  # nn: True = not allowed
    if "attn_mask" in kind:
        g = torch.Generator().manual_seed(7)
        allowed = torch.rand(B, t_q, t_k, generator=g) > 0.4
        allowed[..., 0] = True  # every query may attend somewhere
        ours["attn_mask"] = allowed
        theirs["attn_mask"] = (~allowed).repeat_interleave(H, dim=0)  # nn: (B·H, T_q, T_k)
    return ours, theirs


def run_both(ours, theirs, kind, mask_kind, path, need_weights, kdim=D, vdim=D):
    """Forward and backward through both modules on the same inputs; returns outputs and leaves."""
    ours.attend.path = path
    query, key, value = inputs(kind, kdim, vdim)
    our_masks, their_masks = masks(mask_kind, query.shape[1], T_K)

    def leaves():
        q = query.clone().requires_grad_()
        if kind == "self":
            return q, None, None
        k = key.clone().requires_grad_()
        v = k if value is key else value.clone().requires_grad_()  # keep "key is value" (one matmul)
        return q, k, v

    ours_in, theirs_in = leaves(), leaves()
    out = ours(*ours_in, need_weights=need_weights, **our_masks)
    q, k, v = theirs_in
    k, v = (q, q) if kind == "self" else (k, v)
    their_out, their_weights = theirs(q, k, v, need_weights=need_weights, average_attn_weights=False, **their_masks)
    grad = torch.randn_like(out.output)
    out.output.backward(grad)
    their_out.backward(grad)
    return out, (their_out, their_weights), ours_in, theirs_in


# ----------------------------------------------------------------------- torch.nn agreement
@pytest.mark.parametrize("path", ["math", "fused"])
@pytest.mark.parametrize("kind", ["self", "cross", "cross_kv"])
@pytest.mark.parametrize("mask_kind", ["none", "padding", "causal", "padding+causal", "attn_mask+padding"])
def test_matches_torch_multihead_attention(path, kind, mask_kind, functional):
    ours, theirs = pair()
    need_weights = path == "math"
    out, (their_out, their_weights), our_leaves, their_leaves = run_both(
        ours, theirs, kind, mask_kind, path, need_weights
    )
    assert functional.sdpa_calls == (1 if path == "fused" else 0)

    torch.testing.assert_close(out.output, their_out, **TOL)
    if need_weights:
        assert out.weights.shape == (B, H, their_out.shape[1], T_K)
        torch.testing.assert_close(out.weights, their_weights, **TOL)  # per head
        torch.testing.assert_close(out.weights.mean(1), their_weights.mean(1), **TOL)  # head-averaged
    else:
        assert out.weights is None

    # Gradients w.r.t. the inputs and every parameter agree too.
    for mine, other in zip(our_leaves, their_leaves, strict=True):
        if mine is not None:
            torch.testing.assert_close(mine.grad, other.grad, **TOL)
    for mine, other in zip(param_grads(ours), param_grads(theirs), strict=True):
        torch.testing.assert_close(mine, other, **TOL)


def test_head_averaged_weights_match_torch_default_average():
    ours, theirs = pair()
    x = torch.randn(B, T_K, D)
    keep = torch.arange(T_K)[None, :] < torch.tensor([T_K, 4, 2])[:, None]
    weights = ours(x, key_padding_mask=keep, is_causal=True, need_weights=True).weights
    _, averaged = theirs(x, x, x, key_padding_mask=~keep, attn_mask=~causal_mask(T_K), need_weights=True)
    torch.testing.assert_close(weights.mean(1), averaged, **TOL)


@pytest.mark.parametrize("path", ["math", "fused"])
@pytest.mark.parametrize("mask_kind", ["none", "padding+causal"])
def test_matches_torch_with_different_key_and_value_widths(path, mask_kind, functional):
    ours, theirs = pair(kdim=12, vdim=10)
    assert ours.k_proj.in_features == 12 and ours.v_proj.in_features == 10
    out, (their_out, their_weights), our_leaves, their_leaves = run_both(
        ours, theirs, "cross_kv", mask_kind, path, path == "math", kdim=12, vdim=10
    )
    torch.testing.assert_close(out.output, their_out, **TOL)
    if path == "math":
        torch.testing.assert_close(out.weights, their_weights, **TOL)
    for mine, other in zip(our_leaves, their_leaves, strict=True):
        torch.testing.assert_close(mine.grad, other.grad, **TOL)
    for mine, other in zip(param_grads(ours), param_grads(theirs), strict=True):
        torch.testing.assert_close(mine, other, **TOL)


# --------------------------------------------------------------------------- fully-masked rows
@pytest.mark.parametrize("path", ["math", "fused"])
@pytest.mark.parametrize("how", ["padding", "attn_mask", "padding+alibi"])
def test_fully_masked_rows_give_zero_context_and_finite_gradients(path, how):
    from heedful.attention import ALiBiPositions

    torch.manual_seed(0)
    position = ALiBiPositions(H) if "alibi" in how else None
    attn = MultiHeadAttention(D, H, path=path, position=position)
    with torch.no_grad():
        attn.out_proj.bias.normal_()
    x = torch.randn(B, T_K, D, requires_grad=True)
    if "padding" in how:
        keep = torch.ones(B, T_K, dtype=torch.bool)
        keep[1] = False  # sequence 1 has no real token at all
        out = attn(x, key_padding_mask=keep).output
        dead = (1, slice(None))
    else:
        allowed = torch.ones(T_K, T_K, dtype=torch.bool)
        allowed[2] = False  # query 2 may attend nothing
        out = attn(x, attn_mask=allowed).output
        dead = (slice(None), 2)
    assert torch.isfinite(out).all()
    # Zero context: the output of a query with nothing to attend is the output projection's bias.
    dead_out = out[dead]
    torch.testing.assert_close(dead_out, attn.out_proj.bias.expand_as(dead_out), **TOL)
    (out * torch.randn_like(out)).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in attn.parameters())


# -------------------------------------------------------------------------------- invariances
@pytest.mark.parametrize("path", ["math", "fused"])
def test_padded_keys_never_change_real_outputs(path):
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, H, path=path)
    lengths = torch.tensor([T_K, 4, 2])
    keep = torch.arange(T_K)[None, :] < lengths[:, None]
    x = torch.randn(B, T_K, D)
    changed = torch.where(keep[..., None], x, torch.randn(B, T_K, D) * 100)
    assert not torch.equal(x, changed)
    out, out_changed = (attn(inp, key_padding_mask=keep).output for inp in (x, changed))
    real = keep[..., None].expand_as(out)
    torch.testing.assert_close(out[real], out_changed[real], **TOL)
    # Cross-attention: every query's output is unchanged when padded memory changes.
    query = torch.randn(B, T_Q, D)
    a = attn(query, x, key_padding_mask=keep).output
    b = attn(query, changed, key_padding_mask=keep).output
    torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("path", ["math", "fused"])
def test_causal_outputs_ignore_later_tokens(path):
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, H, path=path)
    x = torch.randn(B, T_K, D)
    full = attn(x, is_causal=True).output
    for t in range(T_K - 1):
        changed = x.clone()
        changed[:, t + 1 :] = torch.randn(B, T_K - t - 1, D)
        out = attn(changed, is_causal=True).output
        torch.testing.assert_close(out[:, : t + 1], full[:, : t + 1], **TOL)
        assert not torch.allclose(out[:, t + 1 :], full[:, t + 1 :])  # later ones do change


def test_unmasked_attention_does_see_every_token():
    # Guard for the causal test: without the mask, changing the last token changes the first output.
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, H)
    x = torch.randn(1, 4, D)
    changed = x.clone()
    changed[:, -1] += 1.0
    assert not torch.allclose(attn(x).output[:, 0], attn(changed).output[:, 0])


# ------------------------------------------------------------------------------- path policy
def test_prefer_fused_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    limit = attend_module.CPU_16BIT_MATH_MAX_SCORES
    assert prefer_fused(cuda, torch.bfloat16, 8, 8)
    assert prefer_fused(cuda, torch.float32, 8, 8)
    fp32_limit = attend_module.CPU_FP32_MATH_MAX_SCORES
    assert not prefer_fused(cpu, torch.float32, 8, 8)  # small: the math path (decoding, short sentences)
    assert not prefer_fused(cpu, torch.float32, 2, fp32_limit // 2)
    assert prefer_fused(cpu, torch.float32, 2, fp32_limit // 2 + 1)
    assert prefer_fused(cpu, torch.float32, 1, 8)  # a lone query keeps the kernel
    assert prefer_fused(cpu, torch.float32, 8, 8, backward=True)  # and so does training
    assert not prefer_fused(cpu, torch.bfloat16, 8, 8, backward=True)  # 16-bit: the math path either way
    assert prefer_fused(cpu, torch.float32, 4096, 4096)
    for dtype in (torch.bfloat16, torch.float16):
        assert not prefer_fused(cpu, dtype, 8, 8)
        assert not prefer_fused(cpu, dtype, 1, limit)
        assert prefer_fused(cpu, dtype, 1, limit + 1)
        assert prefer_fused(cpu, dtype, 4096, 4096)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("limit", [0, 10**9])
def test_auto_path_follows_the_policy(dtype, limit, functional, monkeypatch):
    monkeypatch.setattr(attend_module, "CPU_16BIT_MATH_MAX_SCORES", limit)
    monkeypatch.setattr(attend_module, "CPU_FP32_MATH_MAX_SCORES", 0)  # fp32: the kernel at any size
    attn = MultiHeadAttention(D, H).to(dtype)
    x = torch.randn(B, T_K, D, dtype=dtype)
    out = attn(x, key_padding_mask=torch.ones(B, T_K, dtype=torch.bool))
    expected = prefer_fused(x.device, dtype, T_K, T_K)
    assert expected == (dtype == torch.float32 or limit == 0)
    assert functional.sdpa_calls == int(expected)
    assert out.weights is None


def test_float32_at_small_sizes_takes_the_math_path_for_inference_and_the_kernel_for_training(functional):
    attn = MultiHeadAttention(D, H)
    x = torch.randn(B, T_K, D)
    assert T_K * T_K <= attend_module.CPU_FP32_MATH_MAX_SCORES
    trained = attn(x).output  # parameters require grad: a backward pass may follow
    assert functional.sdpa_calls == 1
    with torch.no_grad():
        inferred = attn(x).output
    assert functional.sdpa_calls == 1  # no grad: the math path
    torch.testing.assert_close(inferred, trained.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("path", ["auto", "fused", "math"])
def test_asking_for_weights_always_takes_the_math_path(path, functional):
    attn = MultiHeadAttention(D, H, path=path)
    out = attn(torch.randn(B, T_K, D), is_causal=True, need_weights=True)
    assert functional.sdpa_calls == 0
    assert out.weights.shape == (B, H, T_K, T_K)
    assert torch.equal(out.weights, out.weights.tril())  # the causal mask reached the weights


def test_forced_paths(functional):
    x = torch.randn(B, T_K, D).bfloat16()
    MultiHeadAttention(D, H, path="fused").bfloat16()(x)  # policy would say math here
    assert functional.sdpa_calls == 1
    MultiHeadAttention(D, H, path="math")(x.float())  # policy would say fused here
    assert functional.sdpa_calls == 1


@pytest.mark.parametrize("score", ["general", "additive", GeneralScore(D // H)])
def test_non_fusable_scores_refuse_the_fused_path(score, functional):
    with pytest.raises(ValueError, match="cannot run on the fused path"):
        MultiHeadAttention(D, H, score=score, path="fused")
    attn = MultiHeadAttention(D, H, score=score)  # auto: falls back to math
    assert attn(torch.randn(B, T_K, D)).output.shape == (B, T_K, D)
    assert functional.sdpa_calls == 0


def test_dot_score_agrees_on_both_paths():
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, H, score="dot", path="fused")
    x = torch.randn(B, T_K, D)
    fused = attn(x, is_causal=True).output
    attn.attend.path = "math"
    torch.testing.assert_close(fused, attn(x, is_causal=True).output, **TOL)


@pytest.mark.parametrize("path", ["math", "fused"])
def test_bfloat16_runs_and_roughly_agrees_with_float32(path):
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, H, path=path)
    x = torch.randn(B, T_K, D)
    keep = torch.arange(T_K)[None, :] < torch.tensor([T_K, 4, 2])[:, None]
    reference = attn(x, key_padding_mask=keep, is_causal=True).output
    low = attn.bfloat16()(x.bfloat16(), key_padding_mask=keep, is_causal=True).output
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), reference, atol=5e-2, rtol=5e-2)


# ----------------------------------------------------------------------------- construction
def test_constructor_errors():
    with pytest.raises(ValueError, match=r"d_model \(10\) must be divisible by n_heads \(4\)"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match="path must be 'auto', 'fused' or 'math'"):
        MultiHeadAttention(D, H, path="flash")


def test_dropout_acts_in_training_only():
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, H, dropout=0.5, path="math")
    x = torch.randn(B, T_K, D)
    first = attn(x, need_weights=True)
    second = attn(x, need_weights=True)
    assert not torch.allclose(first.output, second.output)
    torch.testing.assert_close(first.weights.sum(-1), torch.ones(B, H, T_K))  # reported before dropout
    attn.eval()
    torch.testing.assert_close(attn(x).output, attn(x).output)


# ------------------------------------------------------------------------------- head width
@pytest.mark.parametrize("path", ["math", "fused"])
def test_an_explicit_head_width_computes_the_equation(path):
    """d_head = 5 with D = 16, H = 4: inner width 20, not D. The output is
    Concat_h softmax(q_h k_hᵀ / √5) v_h · W^O, written out head by head."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(D, H, d_head=5, path=path)
    with torch.no_grad():
        for p in attn.parameters():
            if p.dim() == 1:
                p.normal_(std=0.1)
    assert attn.inner_dim == 20 and attn.out_proj.in_features == 20
    x = torch.randn(B, T_K, D)
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)  # (B, T, 20) each
    heads = []
    for h in range(H):
        cols = slice(5 * h, 5 * (h + 1))
        weights = torch.softmax(q[..., cols] @ k[..., cols].transpose(1, 2) / 5**0.5, dim=-1)  # (B, T, T)
        heads.append(weights @ v[..., cols])  # (B, T, 5)
    expected = attn.out_proj(torch.cat(heads, dim=-1))
    torch.testing.assert_close(attn(x).output, expected, **TOL)


# ------------------------------------------------------------------------- packed projection
@pytest.mark.parametrize("path", ["math", "fused"])
@pytest.mark.parametrize("position", ["none", "rope", "alibi"])
def test_a_packed_module_is_the_same_self_attention_in_one_matmul(path, position):
    """packed=True: one qkv_proj whose output is split. With its three row blocks copied into an
    unpacked module's q/k/v, both give the same outputs, weights and input gradients — in one pass
    and step by step through a KV cache."""
    from heedful.attention import KVCache
    from heedful.attention.positions import build_attention_positions

    torch.manual_seed(0)
    pos = build_attention_positions(position, H, D // H, max_len=64)
    packed = MultiHeadAttention(D, H, path=path, position=pos, packed=True)
    plain = MultiHeadAttention(D, H, path=path, position=pos)
    with torch.no_grad():
        packed.qkv_proj.bias.normal_(std=0.1)
        for proj, w, b in zip((plain.q_proj, plain.k_proj, plain.v_proj), packed.qkv_proj.weight.chunk(3),
                              packed.qkv_proj.bias.chunk(3), strict=True):  # fmt: skip
            proj.weight.copy_(w)
            proj.bias.copy_(b)
        plain.out_proj.load_state_dict(packed.out_proj.state_dict())
    x = torch.randn(B, T_K, D)
    keep = torch.arange(T_K)[None, :] < torch.tensor([T_K, 4, 2])[:, None]
    outs = []
    for module in (packed, plain):
        inp = x.clone().requires_grad_()
        out = module(inp, key_padding_mask=keep, is_causal=True, need_weights=True)
        out.output.sum().backward()
        outs.append((out.output, out.weights, inp.grad))
    for got, expected in zip(*outs, strict=True):
        torch.testing.assert_close(got, expected, **TOL)
    with torch.no_grad():
        cache = KVCache()
        steps = [packed(x[:, t : t + 1], is_causal=True, cache=cache).output for t in range(T_K)]
        torch.testing.assert_close(torch.cat(steps, 1), plain(x, is_causal=True).output, **TOL)
    with pytest.raises(ValueError, match="self-attention only"):
        packed(x, torch.randn(B, T_K, D))
    with pytest.raises(ValueError, match="kdim = vdim = d_model"):
        MultiHeadAttention(D, H, kdim=8, packed=True)
