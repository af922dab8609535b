"""Aggregations: from many attention maps (and gradients) to one score per input unit.

* :func:`attention_rollout` — Abnar & Zuidema 2020, eq. 1: each layer's head-averaged
  attention plus the residual connection, ``Â_l = ½ A_l + ½ I`` (rows renormalised), multiplied
  through the layers: ``R = Â_L · … · Â_1``. Row q of R is how much each input position flows
  into position q at the top.
* :func:`attention_flow` — the same graph read as a flow network: the maximum flow from each
  input position to each top position (Abnar & Zuidema 2020, §3).
* :func:`gradient_x_attention` — each captured attention map times the gradient of the
  explained score with respect to it (``A ⊙ ∂y/∂A``, positive part, mean over heads): what
  the attention did *and* what the output is sensitive to.
* :func:`input_x_gradient` — the non-attention control (Shrikumar et al. 2016): per input
  token, ``Σ_d e_d · ∂y/∂e_d`` over its embedding ``e``.
* :func:`logit_lens` — each layer's residual stream put through the model's own output head
  (final norm, then projection): at which layer the prediction forms. The last layer's lens
  is the model's output itself.

The functions take a *score function* (a closure that runs the model and returns one scalar
per example, e.g. the predicted class's logit), so they work for any model built on
:mod:`heedful.attention`, whatever its task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from heedful.explain.capture import capture
from heedful.models.rnn import masked_mean


def attention_rollout(layers: Sequence[Tensor], *, residual: bool = True, head_fusion: str = "mean") -> Tensor:
    """Rollout of self-attention through a stack of layers, first layer first.

    layers: each (B, H, T, T) or (H, T, T) (one example), rows = queries summing to 1. Padded
    keys must carry no weight (heedful's captures give them none); padded query rows come out
    non-zero (a captured padded query still attends to the real keys): slice them off.
    ``head_fusion``: "mean" (Abnar & Zuidema), "max" or "min" over heads.
    Returns (B, T, T) or (T, T): row q = how much of each input position reaches position q.
    """
    if not layers:
        raise ValueError("attention_rollout needs at least one layer's attention")
    fuse = {"mean": lambda a: a.mean(-3), "max": lambda a: a.amax(-3), "min": lambda a: a.amin(-3)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion {head_fusion!r}: one of mean, max, min")
    rollout = None
    for weights in layers:
        a = fuse[head_fusion](weights.float())  # (B, T, T)
        if residual:
            eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
            a = 0.5 * a + 0.5 * eye
            a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)  # rows of probability again
        rollout = a if rollout is None else a @ rollout  # (B, T, T): Â_l · R_{l-1}
    return rollout


def attention_flow(layers: Sequence[Tensor], *, residual: bool = True) -> Tensor:
    """Attention flow (Abnar & Zuidema 2020, §3): the layers as a graph whose nodes are (layer,
    position) and whose edge (l−1, j) → (l, i) has capacity ``Â_l[i, j]`` (heads averaged, the
    residual added as in rollout); entry (i, j) is the maximum flow from input position j to
    position i at the top. One example's layers, each (H, T, T) or (1, H, T, T); returns (T, T).
    Costs one max-flow per (i, j) pair: meant for sentences, not documents."""
    if not layers:
        raise ValueError("attention_flow needs at least one layer's attention")
    caps = []
    for weights in layers:
        a = weights.float().reshape(-1, *weights.shape[-2:]).mean(0)  # (T, T)
        if residual:
            a = 0.5 * a + 0.5 * torch.eye(a.shape[-1])
            a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        caps.append(a.tolist())
    t, n_layers = len(caps[0]), len(caps)
    flow = torch.zeros(t, t)
    for j in range(t):
        for i in range(t):
            flow[i, j] = _max_flow(caps, j, i, t, n_layers)
    return flow


def _max_flow(caps: list[list[list[float]]], source: int, sink: int, t: int, n_layers: int) -> float:
    """Edmonds–Karp on the layered graph: node (l, p) is l·t + p; the source is (0, source) and
    the sink (n_layers, sink)."""
    n = (n_layers + 1) * t
    residual: list[dict[int, float]] = [{} for _ in range(n)]
    for layer, a in enumerate(caps):
        for i in range(t):
            for j in range(t):
                if a[i][j] > 0:
                    u, v = layer * t + j, (layer + 1) * t + i
                    residual[u][v] = residual[u].get(v, 0.0) + a[i][j]
                    residual[v].setdefault(u, 0.0)
    s, z, total = source, n_layers * t + sink, 0.0
    while True:
        parent = {s: s}
        queue = [s]
        for u in queue:  # breadth first: the shortest augmenting path
            for v, c in residual[u].items():
                if c > 1e-12 and v not in parent:
                    parent[v] = u
                    queue.append(v)
        if z not in parent:
            return total
        push, v = float("inf"), z
        while v != s:
            push, v = min(push, residual[parent[v]][v]), parent[v]
        v = z
        while v != s:
            u = parent[v]
            residual[u][v] -= push
            residual[v][u] += push
            v = u
        total += push


def gradient_x_attention(
    model: nn.Module, score: Callable[[], Tensor], names: Sequence[str] | None = None
) -> dict[str, Tensor]:
    """``relu(A ⊙ ∂Σscore/∂A)`` averaged over heads, per attention module (module path -> (B, T_q, T_k)).

    ``score()`` runs ``model`` and returns the explained scalar per example (B,) (e.g. the
    predicted class's logit); examples are independent, so the gradient of their sum is each
    one's own. ``names``: which modules (default: every module that attended, last call each).
    """
    with torch.enable_grad(), capture(model, detach=False) as seen:
        y = score()
        names = list(names) if names is not None else [n for n in seen if isinstance(seen[n], Tensor)]
        weights = [seen[n] for n in names]
        grads = torch.autograd.grad(y.sum(), weights, allow_unused=True)
    out = {}
    for name, a, g in zip(names, weights, grads, strict=True):
        g = torch.zeros_like(a) if g is None else g
        out[name] = (a.detach() * g).clamp_min(0).mean(1).float()  # (B, H, T_q, T_k) -> (B, T_q, T_k)
    return out


def input_x_gradient(embedding: nn.Module, score: Callable[[], Tensor], *, call: int | None = None) -> Tensor:
    """Per input token, ``Σ_d e_d ∂Σscore/∂e_d`` over the output ``e`` (B, T, D) of ``embedding``
    (the model's token embedding module, called once inside ``score()``; or, where one matrix
    embeds source and target alike, ``call`` says which of its calls is the input: 0 = the first,
    the encoder's); returns (B, T). Signed: positive tokens push the score up."""
    kept: list[Tensor] = []

    def keep(_module: nn.Module, _inputs: object, output: Tensor) -> None:
        kept.append(output)

    handle = embedding.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            y = score()
            if call is None and len(kept) != 1:
                raise ValueError(f"the embedding ran {len(kept)} times in score(); say which call is the input")
            if call is not None and not -len(kept) <= call < len(kept):
                raise ValueError(f"the embedding ran {len(kept)} times in score(); there is no call {call}")
            chosen = kept[0 if call is None else call]
            (grad,) = torch.autograd.grad(y.sum(), chosen)
    finally:
        handle.remove()
    return (chosen.detach() * grad).sum(-1).float()  # (B, T)


def logit_lens(
    layers: Sequence[nn.Module], head: Callable[[Tensor], Tensor], run: Callable[[], object]
) -> list[Tensor]:
    """Each layer's output pushed through ``head`` (the model's final norm and projection), in
    layer order: one (…, V) tensor per layer. ``run()`` runs the model once; the last entry is
    what the model itself outputs when ``head`` is its own tail."""
    states: list[Tensor] = []
    hooks = [layer.register_forward_hook(lambda _m, _i, out: states.append(out)) for layer in layers]
    try:
        with torch.no_grad():
            run()
            return [head(state) for state in states]
    finally:
        for hook in hooks:
            hook.remove()


def decoder_logit_lens(model: nn.Module, src: Tensor, tgt_in: Tensor) -> list[Tensor]:
    """The logit lens of an encoder–decoder Transformer: per decoder layer, (B, T, V) logits of
    its residual stream through ``decoder.norm`` and ``decoder.output``."""
    decoder = model.decoder
    return logit_lens(decoder.layers, lambda y: decoder.output(decoder.norm(y)), lambda: model(src, tgt_in))


def classifier_logit_lens(model: nn.Module, tokens: Tensor) -> list[Tensor]:
    """The logit lens of a Transformer-encoder classifier: per encoder layer, (B, C) logits of
    its states through the encoder's final norm, the model's pooling and its head."""
    cfg = model.config
    if cfg.encoder_type != "transformer":
        raise ValueError("the logit lens needs a Transformer encoder (a BiGRU has no layers to read)")
    padding = tokens != cfg.pad_id

    def head(states: Tensor) -> Tensor:
        states = model.encoder.norm(states)  # (B, T, D)
        if cfg.pooling == "cls":
            pooled = states[:, 0]
        elif cfg.pooling == "mean":
            pooled = masked_mean(states, padding)
        else:
            pooled = model.pool(states, padding)
        return model.head(model.dropout(pooled))  # (B, C)

    return logit_lens(model.encoder.layers, head, lambda: model(tokens))


def head_importance(model: nn.Module, score: Callable[[], Tensor]) -> dict[str, Tensor]:
    """Per multi-head attention module, (H,) importances: how much the mean explained score drops
    when that one head's output is zeroed (Michel et al. 2019, by masking rather than by its
    gradient). The head's slice of ``out_proj``'s input is masked by a hook; no weight changes.
    Positive: the head helps the explained output."""
    from heedful.attention import MultiHeadAttention

    with torch.no_grad():
        base = float(score().float().mean())
        out: dict[str, Tensor] = {}
        for name, module in model.named_modules():
            if not isinstance(module, MultiHeadAttention):
                continue
            drops = torch.zeros(module.n_heads)
            for h in range(module.n_heads):
                cols = slice(h * module.d_head, (h + 1) * module.d_head)

                def mask(_module: nn.Module, inputs: tuple[Tensor, ...], cols: slice = cols) -> tuple[Tensor, ...]:
                    context = inputs[0].clone()  # (…, H·d_head): the heads side by side
                    context[..., cols] = 0
                    return (context, *inputs[1:])

                handle = module.out_proj.register_forward_pre_hook(mask)
                try:
                    drops[h] = base - float(score().float().mean())
                finally:
                    handle.remove()
            out[name] = drops
    return out
