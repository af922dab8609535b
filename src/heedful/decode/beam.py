"""Batched beam search over any encoder–decoder that speaks the decoding protocol:

    memory, padding = model.encode(src)                  # (B, S, D), (B, S)
    cache = model.new_cache()                            # .reorder(index, sources_unchanged=False)
                                                         # optional: .reserve(positions, arena),
                                                         # .needs_memory (see below)
    logits = model.decode(tokens, memory, padding, cache)  # new tokens only: (B, 1) -> (B, 1, V)

Every source sentence keeps ``beam_size`` live hypotheses, expanded as rows of one batch of
B·K, so one decoder call per step serves all of them; the cache is re-ordered when beams are
re-ranked (``sources_unchanged=True`` then: rows stay within their sentence, so a cache may keep
per-source state such as cross-attention keys as it is). The first step decodes only B rows —
every sentence has one live beam then — and expands to B·K after it.

Re-ranking and dropping rows index ``memory`` and ``padding`` with the beams — unless the cache
says ``needs_memory`` is False: it then holds all it reads of the memory (a Transformer's
cross-attention keys and values, after the first step), the model reads only ``padding`` from then
on, and the (B·K, S, D) memory is not copied at every expansion and drop.

A hypothesis that emits <eos> is set aside with its score normalised by the GNMT
length penalty ((5 + |y|) / 6)^α (Wu et al. 2016); a sentence is done when it has ``beam_size``
finished hypotheses and no live one can still beat them, or at ``max_len``. Done sentences leave
the batch (a general ``cache.reorder``) once they are DROP_SETTLED of it, so a batch does not keep
decoding every sentence until its slowest one is done.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from heedful.attention import cpu_kernel
from heedful.attention.cache import CacheArena
from heedful.device import eager
from heedful.nn.packed import packed_linears


@dataclass
class Hypothesis:
    tokens: list[int]  # without <bos> and <eos>
    score: float  # length-normalised log-probability
    log_prob: float  # raw sum of token log-probabilities (including <eos> when it ended)
    ended: bool = True  # False when cut off at max_len without <eos>


def length_penalty(length: int, alpha: float) -> float:
    return ((5.0 + length) / 6.0) ** alpha


@torch.no_grad()
def beam_search(
    model,
    src: Tensor,
    *,
    bos_id: int,
    eos_id: int,
    beam_size: int = 5,
    max_len: int | Tensor = 100,
    alpha: float = 1.0,
    n_best: int = 1,
    early_stopping: bool = False,
    min_len: int = 0,
    prepacked: bool = True,
    arena: CacheArena | None = None,
) -> list[list[Hypothesis]]:
    """src: (B, S) -> for each sentence, its ``n_best`` hypotheses, best first.

    ``max_len`` may be one int or a (B,) tensor (e.g. a ratio of each source length).
    ``early_stopping``: a sentence is done as soon as ``beam_size`` hypotheses have ended, as in
    fairseq, instead of when no live hypothesis can beat them any more (exact, and the default).
    ``min_len``: no hypothesis ends with <eos> before this many tokens (its log-probability is set
    to −∞ after the softmax, as fairseq's ``--min-len`` and Hugging Face's ``min_length`` do, so
    scores stay the model's own); a length limit below it still ends them.
    ``prepacked``: float32 Linear layers on the CPU run oneDNN's prepacked kernels
    (:mod:`heedful.nn.packed`; faster, equal to ``F.linear`` up to rounding).
    ``arena``: memory for the key/value caches, kept between calls (see
    :class:`heedful.attention.CacheArena`; :func:`decode_in_batches` passes one to all its
    batches); by default a new one for this call.
    """
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be between 1 and beam_size ({beam_size}), got {n_best}")
    with packed_linears(model, enabled=prepacked), (arena or CacheArena()).lease() as leased:
        return _search(model, src, bos_id, eos_id, beam_size, max_len, alpha, n_best, early_stopping, min_len, leased)


# Positions a search reserves in its caches up front, at most: a longer search grows them by
# doubling, so a generous max_len costs no memory for outputs that end early.
RESERVE_AT_MOST = 64


def new_cache(model, positions: int, arena: CacheArena):
    """``model.new_cache()``, told how many positions the search may decode (up to
    RESERVE_AT_MOST) and where its memory comes from."""
    cache = model.new_cache()
    reserve(cache, min(positions, RESERVE_AT_MOST), arena)
    return cache


def reserve(cache, positions: int, arena: CacheArena | None) -> None:
    """``cache.reserve(positions, arena)`` when the cache takes such hints (``reserve`` is optional
    in the decoding protocol: an RNN's or an ONNX decoder's cache has nothing to reserve)."""
    method = getattr(cache, "reserve", None)
    if method is not None:
        method(positions, arena)


def follow_rows(cache, memory: Tensor, rows: Tensor) -> Tensor:
    """``memory[rows]`` — or ``memory`` as it is when the cache no longer reads it
    (``cache.needs_memory`` False; a cache without the attribute reads it at every step)."""
    return memory[rows] if getattr(cache, "needs_memory", True) else memory


def _search(
    model, src: Tensor, bos_id: int, eos_id: int, beam_size: int, max_len: int | Tensor, alpha: float,
    n_best: int, early_stopping: bool, min_len: int, arena: CacheArena,
) -> list[list[Hypothesis]]:  # fmt: skip
    B, K = src.shape[0], beam_size
    device = src.device
    limits = max_len.tolist() if isinstance(max_len, Tensor) else [int(max_len)] * B
    limit_t = torch.tensor(limits, device=device)  # (B,)
    # The best a live beam could still score, divided by the largest length penalty it can reach.
    best_divisor = ((5.0 + limit_t.float()) / 6.0) ** alpha  # (B,)
    memory, padding = model.encode(src)  # (B, S, D), (B, S)
    cache = new_cache(model, max(limits), arena)  # one position per step
    inf = float("-inf")
    slots = torch.arange(2 * K, device=device)

    # Step 0 has one live beam per sentence: decode B rows, and expand to B·K rows after it.
    k_now = 1
    scores = torch.zeros(B, 1, device=device)  # (B, k_now): each live beam's log-probability
    tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=device)  # (B·k_now, t + 1)
    finished: list[list[Hypothesis]] = [[] for _ in range(B)]
    n_finished = torch.zeros(B, dtype=torch.long, device=device)
    worst_finished = torch.full((B,), inf, device=device)  # the lowest score among the kept finished
    done = torch.zeros(B, dtype=torch.bool, device=device)
    # Settled sentences leave the batch (see DROP_SETTLED); ``ids`` maps a sentence's place in the
    # batch to its index in ``src``, and every per-sentence tensor above shrinks with the batch.
    ids = list(range(B))

    log_prob_buffer = None  # (B·K, V) float32 log-probabilities for logits that cannot hold them, reused every step
    for step in range(max(limits)):
        logits = model.decode(tokens[:, -1:], memory, padding, cache)[:, -1]  # (B·k_now, V)
        # Float32 logits are overwritten by their log-probabilities: no second (B·K, V) tensor to
        # fill (an int8 beam-5 decoding of Multi30k measured 3 % faster than with a kept buffer).
        # 16-bit or strided logits go to the buffer.
        if logits.dtype == torch.float32 and logits.is_contiguous():
            log_probs_into = logits
        else:
            if log_prob_buffer is None:  # V is known from the first step's logits
                log_prob_buffer = logits.new_empty(B * K, logits.shape[1], dtype=torch.float32)
            log_probs_into = log_prob_buffer
        banned = eos_id if step < min_len else None  # too short to end yet
        top_scores, beam_of, token_of = best_continuations(logits, scores, 2 * K, out=log_probs_into, banned=banned)
        del logits  # free before the next step's logits are allocated, so the memory is reused
        if top_scores.shape[1] < 2 * K:  # a vocabulary below 2K: pad with impossible candidates
            top_scores = F.pad(top_scores, (0, 2 * K - top_scores.shape[1]), value=inf)
            beam_of = F.pad(beam_of, (0, 2 * K - beam_of.shape[1]), value=0)
            token_of = F.pad(token_of, (0, 2 * K - token_of.shape[1]), value=0)
        length = step + 1

        # Every candidate either ends (<eos>, or the sentence's length limit) or may continue;
        # the K best that continue become the next beams — all as tensor operations.
        real = (top_scores > inf) & ~done[:, None]
        ends = real & ((token_of == eos_id) | (length >= limit_t)[:, None])
        live = real & ~ends
        take = live & (live.cumsum(-1) <= K)
        order = torch.where(take, slots, slots + 2 * K).argsort(-1)[:, :K]  # taken ones first, by rank
        kept = take.gather(1, order)  # (B, K)
        new_scores = torch.where(kept, top_scores.gather(1, order), inf)
        origin = torch.where(kept, beam_of.gather(1, order), 0)
        next_token = torch.where(kept, token_of.gather(1, order), bos_id)  # a valid id even where unused

        if ends.any():  # only the (few) hypotheses that end go through Python
            # Of the candidates that end with the same body length, only the K best can ever be
            # kept (same length, same penalty): with <eos>, and cut off at the limit — so at the
            # last step K per sentence go through Python, not 2K.
            by_eos = ends & (token_of == eos_id)
            by_limit = ends & ~by_eos
            ends = (by_eos & (by_eos.cumsum(-1) <= K)) | (by_limit & (by_limit.cumsum(-1) <= K))
            b_j = ends.nonzero()  # (E, 2)
            rows = b_j[:, 0] * k_now + beam_of[ends]  # (E,) the beam each came from
            for (b, _), token, score, body in zip(
                b_j.tolist(), token_of[ends].tolist(), top_scores[ends].tolist(), tokens[rows, 1:].tolist(), strict=True
            ):
                ended = token == eos_id
                body = body if ended else [*body, token]
                finished[ids[b]].append(Hypothesis(body, score / length_penalty(len(body), alpha), score, ended))
            for b in set(b_j[:, 0].tolist()):
                kept_hyps = finished[ids[b]] = sorted(finished[ids[b]], key=lambda h: h.score, reverse=True)[:K]
                n_finished[b] = len(kept_hyps)
                worst_finished[b] = kept_hyps[-1].score
        # Settled: K hypotheses finished and no live beam, even ending at its most favourable
        # length, could beat the worst of them (log-probabilities only fall) — or, with
        # early_stopping, K hypotheses finished.
        best_live = new_scores.max(-1).values  # (B,)
        best_case = best_live / torch.where(best_live < 0, best_divisor, torch.ones_like(best_divisor))
        settled = (n_finished >= K) & ((best_live == inf) | (best_case <= worst_finished) | early_stopping)
        done |= (length >= limit_t) | settled
        if bool(done.all()):
            break
        rows = torch.arange(B, device=device)[:, None] * k_now + origin  # (B, K): each new beam's parent row
        if k_now == 1:  # expand every per-sentence state from B to B·K rows, once
            rows = rows.view(-1)
            memory, padding = follow_rows(cache, memory, rows), padding[rows]
            cache.reorder(rows)
            k_now = K
        elif int(done.sum()) >= DROP_SETTLED * B:  # settled sentences leave: later steps decode only the rest
            keep = (~done).nonzero().squeeze(1)  # (B_kept,)
            rows = rows[keep].view(-1)
            memory, padding = follow_rows(cache, memory, rows), padding[rows]
            cache.reorder(rows)  # sources change: the caches keep only the kept sentences' state
            next_token, new_scores = next_token[keep], new_scores[keep]
            limit_t, best_divisor, n_finished, worst_finished, done = (
                t[keep] for t in (limit_t, best_divisor, n_finished, worst_finished, done)
            )
            ids = [ids[i] for i in keep.tolist()]
            B = len(ids)
        else:  # beams move only within their sentence: per-source state stays as it is
            rows = rows.view(-1)
            cache.reorder(rows, sources_unchanged=True)
        tokens = torch.cat([tokens[rows], next_token.reshape(-1, 1)], dim=1)
        scores = new_scores

    return [hyps[:n_best] for hyps in finished]


# Drop settled sentences from the batch once they are this share of it. Dropping copies the kept
# rows' caches (about what one re-ordering of plain caches costs) and saves their share of every
# later step, so it pays within a step or two.
DROP_SETTLED = 1 / 8

# Tokens per chunk in best_continuations' first level: the chunk maxima then cost one pass over
# the log-probabilities, and the second level reads n chunks of this size per sentence.
CHUNK = 64


def best_continuations(
    logits: Tensor, scores: Tensor, n: int, out: Tensor | None = None, banned: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``n`` best continuations of every sentence, over all its beams and tokens.

    logits: (B·k, V) for the k live beams of B sentences (sentence-major); scores: (B, k) the
    beams' log-probabilities so far. Returns, best first, (B, min(n, k·V)) scores (beam score +
    the token's log-probability), the beam each came from and its token. ``out``: where the
    float32 log-probabilities go, at least B·k rows of V — float32 ``logits`` themselves (beam
    search overwrites them), or a buffer it keeps from step to step for 16-bit logits: a fresh
    (B·k, V) tensor every step made the log-softmax 10–25 % slower (500 × 8,000 on 2 cores:
    1.37–1.48 ms against 1.17–1.31; docs/RESULTS.md, "Small sizes"). ``banned``: a token no
    candidate may take (its log-probability −∞; <eos> before ``min_len``).

    On the CPU, float32 logits go to beam_candidates.c (:func:`_candidates_in_c`), which reads
    them twice while each row is in cache and writes no log-probabilities (``out`` is then left
    alone). Elsewhere, exact in two levels, because ``topk`` over k·V values per sentence was the
    costliest part of a step after the matmuls: split each beam's log-probabilities into chunks of CHUNK tokens;
    the n chunks with the highest maxima (beam score added) hold the n best candidates — one
    outside them is beaten by n chunk maxima — so the final ``topk`` reads n·CHUNK values.
    """
    B, k = scores.shape
    V = logits.shape[-1]
    found = _candidates_in_c(logits, scores, n, banned)
    if found is not None:
        return found
    buffer = None if out is None else out[: B * k]
    log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.float32, out=buffer).view(B, k, V)  # (B, k, V)
    if banned is not None and 0 <= banned < V:
        log_probs[:, :, banned] = float("-inf")
    n_chunks = V // CHUNK
    if n_chunks <= n:  # a small vocabulary: one top-k over all k·V candidates
        candidates = (log_probs + scores[:, :, None]).view(B, k * V)
        top, index = candidates.topk(min(n, k * V), dim=-1)
        return top, index // V, index % V
    chunks = log_probs[:, :, : n_chunks * CHUNK].view(B, k, n_chunks, CHUNK)  # (B, k, C, CHUNK)
    chunk_best = (chunks.amax(-1) + scores[:, :, None]).view(B, k * n_chunks)  # (B, k·C)
    chosen = chunk_best.topk(n, dim=-1).indices  # (B, n)
    beam, chunk = chosen // n_chunks, chosen % n_chunks
    sentence = torch.arange(B, device=logits.device)[:, None]
    values = chunks[sentence, beam, chunk] + scores.gather(1, beam)[:, :, None]  # (B, n, CHUNK)
    offsets = torch.arange(CHUNK, device=logits.device)
    tokens = chunk[:, :, None] * CHUNK + offsets  # (B, n, CHUNK)
    beams = beam[:, :, None].expand(B, n, CHUNK)
    values, tokens, beams = values.reshape(B, -1), tokens.reshape(B, -1), beams.reshape(B, -1)
    tail = V - n_chunks * CHUNK
    if tail:  # the last, partial chunk: all its candidates go to the final round
        tail_values = (log_probs[:, :, -tail:] + scores[:, :, None]).view(B, k * tail)
        tail_index = torch.arange(k * tail, device=logits.device).expand(B, -1)
        values = torch.cat([values, tail_values], dim=1)
        tokens = torch.cat([tokens, V - tail + tail_index % tail], dim=1)
        beams = torch.cat([beams, tail_index // tail], dim=1)
    top, index = values.topk(n, dim=-1)  # (B, n)
    return top, beams.gather(1, index), tokens.gather(1, index)


def _candidates_in_c(
    logits: Tensor, scores: Tensor, n: int, banned: int | None
) -> tuple[Tensor, Tensor, Tensor] | None:
    """:func:`best_continuations` by beam_candidates.c: float32 logits on the CPU, their tokens
    contiguous, no gradient, an eager run; None otherwise (or without the compiled kernels), for
    the PyTorch path. The same candidates up to float32 rounding of the normalizer (its
    exponentials are a polynomial here, PyTorch's another)."""
    B, k = scores.shape
    V = logits.shape[-1]
    plain = logits.dtype == scores.dtype == torch.float32 and logits.device.type == scores.device.type == "cpu"
    if not plain or logits.dim() != 2 or logits.stride(1) != 1 or not 1 <= n <= min(k * V, MAX_KERNEL_CANDIDATES):
        return None
    if (torch.is_grad_enabled() and logits.requires_grad) or not eager():
        return None
    lib = cpu_kernel.load()
    if lib is None:
        return None
    scores = scores.contiguous()
    top = torch.empty(B, n)
    beam_of = torch.empty(B, n, dtype=torch.long)
    token_of = torch.empty(B, n, dtype=torch.long)
    address = Tensor.data_ptr
    banned = -1 if banned is None or not 0 <= banned < V else banned
    lib.heedful_beam_candidates_f32(
        address(logits), logits.stride(0), address(scores), B, k, V, n, banned,
        address(top), address(beam_of), address(token_of),
    )  # fmt: skip
    return top, beam_of, token_of


# beam_candidates.c keeps a sentence's n best on the stack: at most this many (beam size 128).
MAX_KERNEL_CANDIDATES = 256
