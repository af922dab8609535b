"""Decoding speed: greedy with the key/value cache against recomputing the prefix, and heedful's
batched beam search against Hugging Face transformers' MarianMTModel.generate at equal size.

    python benchmarks/decoding.py                  # the 1,000 test2016 sources (roughly 5 minutes on a 2-core CPU)
    python benchmarks/decoding.py --quick          # smoke run: 64 sources, N = 20 / 10 (< 1 minute on 1 thread)
    python benchmarks/decoding.py --threads 2 --json decoding.json --strict
    python benchmarks/decoding.py --device cuda

The model is the Multi30k Transformer (the ``model:`` section of configs/multi30k/transformer.yaml:
d_model 256, 4 heads, 3 + 3 layers, d_ff 1024, one embedding matrix shared by source, target and
output). With ``--model-dir`` (default runs/multi30k-transformer/model) holding a trained model, its
weights and sentencepiece vocabulary are used; otherwise random weights (with the configured
vocabulary size, 8,000) and a sentencepiece vocabulary trained here on the training text (its
first 2,000 pairs under ``--quick``). The
sources are test_2016_flickr.en from ``--data-root``, tokenized as the translate task does, and
decoded in the task's batches: sorted by length and cut by ``batches_by_length`` at
decode.batch_tokens = 8,000 source tokens × beam (so about 160 sentences, 800 beam rows, at most).

  greedy    heedful.decode.greedy_decode: one new token per step through the key/value cache
  recompute the same model without the cache: every step runs ``model.decode`` on the whole
            prefix (<bos> + all tokens so far) and takes the last position — N = 50 tokens
  beam      heedful.decode.beam_search, beam 5, batched over sentences (B·5 rows per step), as
            the translate task runs it: float32 Linears on oneDNN's prepacked kernels
            (heedful.nn.packed; ``decode.prepacked``), and the key/value caches' memory from one
            CacheArena kept from batch to batch (heedful.decode.decode_in_batches keeps one too)
  beam (F.linear)  the same with ``prepacked=False``: every Linear on torch's own F.linear, as HF's
  HF        transformers.MarianMTModel(MarianConfig(...)).generate, num_beams = 5, random weights,
            the same size (d_model 256, 4 heads, 3 + 3 layers, FFN 1024, ReLU, shared and tied
            embeddings, scaled embeddings, sinusoidal positions), the same vocabulary size and
            the same source batches — N = 20 tokens

Equal work. Every output is forced to N tokens, so both sides of a comparison do the same work
however good or bad the weights. Ours gets an <eos> id no model can emit (−1): no hypothesis ever
ends and every batch runs exactly N decoder steps. The peer is forced the same way by default
(``--hf-forcing no-eos``: ``eos_token_id=None``, so its <eos> is an ordinary token, and
``max_new_tokens = N``). ``--hf-forcing min-new-tokens`` instead keeps its <eos> and masks it with
``min_new_tokens = N``; that logits processor is extra work per step (≈ 15 % of HF's time at this
size, measured on 1 thread), so it flatters ours. An untimed warm-up counts the decoder calls of
each method (exactly N), and every timed output is checked to hold N tokens per sentence.

Timing. Each pass decodes all batches; within a pass the methods alternate batch by batch, the
one that goes first changing from batch to batch and from pass to pass, so drifts in machine load
hit every method alike. A method's time is the median over passes of its summed batch times; the
ratios are *paired*: in every pass, the slower method's time over ours in that same pass, then the
median over passes. By default the beam comparison makes 3 passes and the greedy one 1 (its
recompute side alone takes minutes, and the ratio is far from the bar). Everything runs under
``torch.inference_mode`` in float32; on CUDA, timing synchronizes the device. Cached and
recomputed greedy must produce identical tokens, which is checked. Besides the comparisons, ours
runs once at natural length (the real <eos>, the task's limits of 1.5 × source + 10 tokens,
α = 0.6), for scale — meaningful with trained weights only.

Acceptance (printed as PASS/FAIL; ``--strict`` exits 1 on FAIL):
  * greedy with the cache is ≥ 3× faster than recomputing the prefix, at 50 output tokens;
  * batched beam-5 decoding is ≥ 1.5× the speed of MarianMTModel.generate, at 20 output tokens;
  * the cached and recomputed greedy outputs are identical, and every output has N tokens.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from heedful.attention import CacheArena
from heedful.data.parallel import batches_by_length
from heedful.data.tokenizers import SentencePieceTokenizer, Tokenizer, load_tokenizers, pad_ids
from heedful.decode import Hypothesis, beam_search, greedy_decode
from heedful.models import TransformerEncoderDecoder, load_pretrained
from heedful.nn.packed import packed_linears
from heedful.runs import load_config

CONFIG = Path("configs/multi30k/transformer.yaml")
SOURCES = "test_2016_flickr.en.gz"
GREEDY_TOKENS, BEAM_TOKENS, BEAM_SIZE = 50, 20, 5
GREEDY_MIN, BEAM_MIN = 3.0, 1.5  # the acceptance: speed-up over recompute, and over HF generate
NEVER = -1  # an <eos> id no model can emit: every row decodes the full number of steps
QUICK = {"sentences": 64, "greedy_tokens": 20, "beam_tokens": 10, "passes": 1, "greedy_passes": 1}
FULL = {"sentences": None, "greedy_tokens": GREEDY_TOKENS, "beam_tokens": BEAM_TOKENS, "passes": 3, "greedy_passes": 1}


# ------------------------------------------------------------------------------------ the setup
@dataclass
class Setup:
    model: TransformerEncoderDecoder
    tok: Tokenizer  # joint: source and target
    sources: list[list[int]]  # token ids of each source sentence, as the translate task encodes them
    origin: str  # where the weights came from
    batch_tokens: int  # decode.batch_tokens
    alpha: float
    limits: list[int]  # the task's output limit per source (for the natural-length run)


def read_sources(data_root: Path) -> list[str]:
    path = data_root / SOURCES
    if not path.is_file():
        raise SystemExit(f"{path}: not found — point --data-root at the Multi30k files")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f]


def train_tokenizer(data_root: Path, vocab_size: int, lines: int | None) -> SentencePieceTokenizer:
    """A joint sentencepiece vocabulary from the training text (its first ``lines`` pairs, if set)."""
    texts: list[str] = []
    for lang in ("en", "de"):
        with gzip.open(data_root / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
            texts += [line.strip() for line in f][:lines]
    return SentencePieceTokenizer.train(texts, vocab_size=vocab_size)


def load_setup(args: argparse.Namespace, sentences: int | None) -> Setup:
    cfg = load_config(CONFIG)
    model_dir = Path(args.model_dir)
    if (model_dir / "config.json").is_file():
        model = load_pretrained(model_dir)
        tok = load_tokenizers(model_dir)[0]
        origin = f"trained weights from {model_dir}"
    else:
        vocab = cfg.data.tokenizer.vocab_size
        tok = train_tokenizer(Path(args.data_root), vocab, 2000 if args.quick else None)
        torch.manual_seed(0)
        # The configured vocabulary size even when the tokenizer came out smaller: the output
        # projection is a large part of a decoding step, so it should have its real size.
        sizes = {"src_vocab_size": vocab, "tgt_vocab_size": vocab, "pad_id": tok.pad_id}
        model = TransformerEncoderDecoder(cfg.model.model_validate(cfg.model.model_dump() | sizes))
        origin = f"random weights (no model in {model_dir}); sentencepiece trained here, {len(tok)} pieces"
    if not isinstance(model, TransformerEncoderDecoder):
        raise SystemExit(f"{model_dir}: holds a {type(model).__name__}, not a Transformer encoder–decoder")
    model = model.to(args.device).eval()
    max_len = model.config.max_len
    sources = [tok.encode(text)[:max_len] for text in read_sources(Path(args.data_root))][:sentences]
    d = cfg.decode
    limits = [  # TranslateTask._output_limit
        max(1, min(d.max_len, math.ceil(d.max_len_ratio * len(s)) + d.max_len_offset, max_len - 1)) for s in sources
    ]
    return Setup(model, tok, sources, origin, args.batch_tokens or d.batch_tokens, d.alpha, limits)


def build_peer(model: TransformerEncoderDecoder, tok: Tokenizer, device: str) -> nn.Module:
    """MarianMTModel of the same size and vocabulary, random weights."""
    from transformers import MarianConfig, MarianMTModel

    c = model.config
    config = MarianConfig(
        vocab_size=c.tgt_vocab_size,
        d_model=c.d_model,
        encoder_layers=c.n_encoder_layers,
        decoder_layers=c.n_decoder_layers,
        encoder_attention_heads=c.n_heads,
        decoder_attention_heads=c.n_heads,
        encoder_ffn_dim=c.d_ff,
        decoder_ffn_dim=c.d_ff,
        activation_function=c.activation,
        max_position_embeddings=512,
        scale_embedding=True,  # ours scales by √D too (§3.4)
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_id,
        eos_token_id=tok.eos_id,
        bos_token_id=tok.bos_id,
        decoder_start_token_id=tok.bos_id,
        forced_eos_token_id=None,
    )
    torch.manual_seed(0)
    return MarianMTModel(config).to(device).eval()


# ------------------------------------------------------------------------------- the decoders
def recompute_greedy(model: TransformerEncoderDecoder, src: Tensor, *, bos_id: int, steps: int) -> Tensor:
    """Greedy decoding without the cache: every step runs the decoder over the whole prefix."""
    with packed_linears(model):  # the same Linear kernels as greedy_decode's
        memory, padding = model.encode(src)  # (B, S, D), (B, S)
        prefix = torch.full((src.shape[0], 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
        for _ in range(steps):
            logits = model.decode(prefix, memory, padding, None)[:, -1].float()  # (B, t, V) -> (B, V)
            best = logits.log_softmax(-1).argmax(-1)  # the same operations as greedy_decode
            prefix = torch.cat([prefix, best[:, None]], dim=1)  # (B, t + 1)
    return prefix[:, 1:]  # (B, steps)


@dataclass
class Method:
    name: str
    run: Callable[[Tensor], object]  # a source batch (B, S) -> the decoder's own output (timed)
    tokens: Callable[[object], Tensor]  # that output -> tokens (B, longest), −1 after a short one (untimed)


def methods(
    setup: Setup, peers: dict[str, nn.Module], greedy_n: int, beam_n: int, hf_forcing: str
) -> dict[str, Method]:
    model, bos = setup.model, setup.tok.bos_id
    arena = CacheArena()  # ours' searches run one at a time: one arena serves them all, batch after batch

    def ours_greedy(src: Tensor) -> Tensor:
        return greedy_decode(model, src, bos_id=bos, eos_id=NEVER, max_len=greedy_n, arena=arena)[0]

    def ours_recompute(src: Tensor) -> Tensor:
        return recompute_greedy(model, src, bos_id=bos, steps=greedy_n)

    def ours_beam(src: Tensor, prepacked: bool = True) -> list[list[Hypothesis]]:
        return beam_search(
            model, src, bos_id=bos, eos_id=NEVER, beam_size=BEAM_SIZE, max_len=beam_n, prepacked=prepacked, arena=arena
        )

    def ours_beam_bf16(src: Tensor) -> list[list[Hypothesis]]:
        # What `decode.precision: bf16` does: autocast around the search (weights stay fp32).
        with torch.autocast(src.device.type, dtype=torch.bfloat16):
            return ours_beam(src)

    def beam_tokens(hyps: list[list[Hypothesis]]) -> Tensor:
        return pad_ids([h[0].tokens if not h[0].ended else [] for h in hyps], -1)

    # The peer's length forcing: no <eos> at all (like ours), or its <eos> masked until N tokens.
    forcing = {"eos_token_id": None} if hf_forcing == "no-eos" else {"min_new_tokens": beam_n}

    def hf_beam(src: Tensor, peer: nn.Module) -> Tensor:
        return peer.generate(
            input_ids=src,
            attention_mask=src != setup.tok.pad_id,
            num_beams=BEAM_SIZE,
            max_new_tokens=beam_n,
            early_stopping=False,
            do_sample=False,
            **forcing,
        )

    def hf_tokens(out: Tensor) -> Tensor:
        tokens = out[:, 1:]  # without the decoder start token: (B, N)
        if hf_forcing == "min-new-tokens":  # a masked <eos> must not appear
            tokens = torch.where(tokens == setup.tok.eos_id, -1, tokens)
        return tokens

    found = {
        "greedy": Method("greedy (cache)", ours_greedy, lambda out: out),
        "recompute": Method("recompute prefix", ours_recompute, lambda out: out),
        "beam": Method("beam-5 (ours)", ours_beam, beam_tokens),
        "beam_plain": Method("beam-5 (ours, F.linear)", lambda src: ours_beam(src, prepacked=False), beam_tokens),
    }
    found["beam_bf16"] = Method("beam-5 (ours, bf16)", ours_beam_bf16, beam_tokens)
    for name, peer in peers.items():
        label = "beam-5 (HF generate)" if name == "hf" else "beam-5 (HF generate, bf16)"
        found[name] = Method(label, lambda src, peer=peer: hf_beam(src, peer), hf_tokens)
    return found


def at_least_one(text: str) -> int:
    """An argparse type: a count of passes (0 would silently mean the default)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number ≥ 1, got {text!r}")
    return int(text)


# ---------------------------------------------------------------------------------- timing
def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass
class Comparison:
    names: tuple[str, ...]
    seconds: dict[str, list[float]]  # per pass, summed over batches
    tokens: dict[str, list[Tensor]]  # first pass, per batch: (B, longest), −1 after a short output


def make_batches(setup: Setup, beam: int, device: str) -> tuple[list[list[int]], list[Tensor]]:
    """The translate task's decoding batches (indices and padded ids): sorted by length, at most
    ``batch_tokens`` source tokens × beam each."""
    plan = batches_by_length([len(s) * beam for s in setup.sources], setup.batch_tokens)
    return plan, [pad_ids([setup.sources[i] for i in indices], setup.tok.pad_id).to(device) for indices in plan]


def compare(found: dict[str, Method], names: tuple[str, ...], batches: list[Tensor], passes: int, device: str):
    """Time each method over all batches, ``passes`` times, alternating methods batch by batch."""
    seconds = {name: [0.0] * passes for name in names}
    tokens: dict[str, list[Tensor]] = {name: [] for name in names}
    with torch.inference_mode():
        for p in range(passes):
            for b, src in enumerate(batches):
                shift = (p + b) % len(names)
                for name in names[shift:] + names[:shift]:
                    sync(device)
                    start = time.perf_counter()
                    out = found[name].run(src)
                    sync(device)
                    seconds[name][p] += time.perf_counter() - start
                    if p == 0:
                        tokens[name].append(found[name].tokens(out).cpu())
    return Comparison(names, seconds, tokens)


@contextmanager
def counting_calls(module: nn.Module):
    """Count the forward calls of ``module`` inside the block."""
    calls = [0]
    handle = module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    try:
        yield calls
    finally:
        handle.remove()


def check_steps(setup: Setup, peers: dict[str, nn.Module], found: dict[str, Method], src: Tensor, steps: dict) -> list:
    """Untimed warm-up that counts decoder calls: exactly N for a batch, and N tokens per sentence."""
    decoders = {name: setup.model.decoder for name in ("greedy", "recompute", "beam", "beam_plain", "beam_bf16")}
    decoders |= {name: peer.get_decoder() for name, peer in peers.items()}
    failures = []
    with torch.inference_mode():
        for name, decoder in decoders.items():
            with counting_calls(decoder) as calls:
                out = found[name].tokens(found[name].run(src)).cpu()
            n = steps[name]
            ok = calls[0] == n and token_counts_ok([out], n)
            print(f"  {found[name].name:<28} {calls[0]} decoder calls, output {tuple(out.shape)} "
                  f"-> {'ok' if ok else f'expected {n} calls and ({src.shape[0]}, {n})'}")  # fmt: skip
            if not ok:
                failures.append(f"{found[name].name}: {calls[0]} decoder calls for N = {n}, output {tuple(out.shape)}")
    return failures


def token_counts_ok(outputs: list[Tensor], n: int) -> bool:
    """Every sentence got exactly n tokens (a short or ended output shows as −1)."""
    return all(out.shape[1] == n and bool((out >= 0).all()) for out in outputs)


# ------------------------------------------------------------------------------------ report
def median_ratio(slow: list[float], fast: list[float]) -> float:
    return statistics.median(s / f for s, f in zip(slow, fast, strict=True))


def report_line(label: str, seconds: list[float], sentences: int, tokens: int) -> str:
    t = statistics.median(seconds)
    spread = f"  (passes: {', '.join(f'{x:.2f}' for x in seconds)} s)" if len(seconds) > 1 else ""
    return f"  {label:<28} {t:8.2f} s  {sentences / t:8.1f} sentences/s  {tokens / t:9.0f} tokens/s{spread}"


def natural_length(setup: Setup, plan: list[list[int]], batches: list[Tensor], device: str) -> tuple[float, int]:
    """Ours as the translate task runs it: real <eos>, per-source limits; (seconds, output tokens)."""
    tokens = 0
    with torch.inference_mode():
        sync(device)
        start = time.perf_counter()
        for indices, src in zip(plan, batches, strict=True):
            limits = torch.tensor([setup.limits[i] for i in indices])
            hyps = beam_search(setup.model, src, bos_id=setup.tok.bos_id, eos_id=setup.tok.eos_id,
                               beam_size=BEAM_SIZE, max_len=limits, alpha=setup.alpha)  # fmt: skip
            tokens += sum(len(h[0].tokens) for h in hyps)
        sync(device)
    return time.perf_counter() - start, tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 64 sources, short outputs, one pass")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--model-dir", default="runs/multi30k-transformer/model", help="a trained model folder")
    parser.add_argument("--data-root", default="../shared/data/multi30k", help="folder with test_2016_flickr.en.gz")
    parser.add_argument("--sentences", type=int, default=None, help="decode only the first N sources")
    parser.add_argument("--passes", type=at_least_one, default=None, help="timed passes of the beam comparison")
    parser.add_argument(
        "--greedy-passes", type=at_least_one, default=None, help="timed passes of the greedy comparison"
    )
    parser.add_argument("--batch-tokens", type=int, default=None, help="source tokens × beam per batch")
    parser.add_argument("--hf-forcing", choices=("no-eos", "min-new-tokens"), default="no-eos",
                        help="how HF generate is held to N tokens (see the docstring)")  # fmt: skip
    parser.add_argument("--no-peer", action="store_true", help="skip the Hugging Face comparison")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the acceptance fails")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = QUICK if args.quick else FULL
    greedy_n, beam_n = mode["greedy_tokens"], mode["beam_tokens"]
    passes, greedy_passes = args.passes or mode["passes"], args.greedy_passes or mode["greedy_passes"]
    setup = load_setup(args, args.sentences or mode["sentences"])
    peer = None if args.no_peer else build_peer(setup.model, setup.tok, args.device)
    # The same peer in bfloat16 (weights and activations), to compare like with like at 16 bits.
    peers = {} if peer is None else {"hf": peer, "hf_bf16": copy.deepcopy(peer).to(torch.bfloat16)}
    found = methods(setup, peers, greedy_n, beam_n, args.hf_forcing)
    n_src = len(setup.sources)
    _, greedy_batches = make_batches(setup, 1, args.device)
    beam_plan, beam_batches = make_batches(setup, BEAM_SIZE, args.device)

    import transformers

    c = setup.model.config
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, device {args.device}, "
        f"{torch.get_num_threads()} threads, float32; {setup.origin}\n"
        f"model: d_model {c.d_model}, {c.n_heads} heads, {c.n_encoder_layers}+{c.n_decoder_layers} layers, "
        f"d_ff {c.d_ff}, vocabulary {c.tgt_vocab_size}; {n_src} sources ({SOURCES}), "
        f"{sum(map(len, setup.sources)) / n_src:.1f} tokens on average\n"
        f"batches of ≤ {setup.batch_tokens} source tokens × beam: {len(greedy_batches)} greedy, "
        f"{len(beam_batches)} beam; timed passes: {greedy_passes} greedy, {passes} beam; HF forcing: {args.hf_forcing}"
    )
    steps = {"greedy": greedy_n, "recompute": greedy_n, "beam": beam_n, "hf": beam_n, "beam_bf16": beam_n}
    steps |= {"hf_bf16": beam_n, "beam_plain": beam_n}
    print("step check (untimed warm-up on 4 sentences):")
    failures = check_steps(setup, peers, found, beam_batches[0][:4], steps)

    print(f"\ngreedy, {greedy_n} output tokens per sentence:", flush=True)
    greedy = compare(found, ("greedy", "recompute"), greedy_batches, greedy_passes, args.device)
    for name in greedy.names:
        print(report_line(found[name].name, greedy.seconds[name], n_src, n_src * greedy_n))
        if not token_counts_ok(greedy.tokens[name], greedy_n):
            failures.append(f"{found[name].name}: an output does not have {greedy_n} tokens")
    greedy_ratio = median_ratio(greedy.seconds["recompute"], greedy.seconds["greedy"])
    pairs = list(zip(greedy.tokens["greedy"], greedy.tokens["recompute"], strict=True))
    same = all(torch.equal(a, b) for a, b in pairs)
    differ = sum(int((a != b).any(1).sum()) for a, b in pairs if a.shape == b.shape)
    print(f"  cache speed-up: recompute / greedy = {greedy_ratio:.2f}× (paired, median over passes)")
    print(f"  identical tokens, cache vs recompute: {'yes' if same else f'NO ({differ} of {n_src} sentences differ)'}")
    if not same:
        failures.append(f"greedy with the cache and recompute differ on {differ} of {n_src} sentences")
    if greedy_ratio < GREEDY_MIN:
        failures.append(f"greedy with the cache is only {greedy_ratio:.2f}× faster than recompute (< {GREEDY_MIN}×)")

    print(f"\nbeam {BEAM_SIZE}, {beam_n} output tokens per sentence:", flush=True)
    beam_names = ("beam", "beam_plain", "beam_bf16") + (("hf", "hf_bf16") if peer is not None else ())
    beam = compare(found, beam_names, beam_batches, passes, args.device)
    for name in beam.names:
        print(report_line(found[name].name, beam.seconds[name], n_src, n_src * beam_n))
        if not token_counts_ok(beam.tokens[name], beam_n):
            failures.append(f"{found[name].name}: an output does not have {beam_n} tokens")
    prepacked_ratio = median_ratio(beam.seconds["beam_plain"], beam.seconds["beam"])
    differ_plain = sum(
        int((a != b).any(1).sum()) if a.shape == b.shape else a.shape[0]
        for a, b in zip(beam.tokens["beam"], beam.tokens["beam_plain"], strict=True)
    )
    print(f"  prepacked Linears vs F.linear (heedful.nn.packed): {prepacked_ratio:.2f}× (paired, median over passes); "
          f"best hypotheses differing: {differ_plain} of {n_src} sentences")  # fmt: skip
    beam_ratio = plain_ratio = None
    if peer is not None:
        beam_ratio = median_ratio(beam.seconds["hf"], beam.seconds["beam"])
        bf16_ratio = median_ratio(beam.seconds["hf_bf16"], beam.seconds["beam_bf16"])
        cross_ratio = median_ratio(beam.seconds["hf"], beam.seconds["beam_bf16"])
        plain_ratio = median_ratio(beam.seconds["hf"], beam.seconds["beam_plain"])
        print(f"  speed vs HF, both fp32: HF time / ours = {beam_ratio:.2f}× (paired, median over passes)")
        print(f"  speed vs HF, both fp32, ours on F.linear: {plain_ratio:.2f}×")
        print(f"  speed vs HF, both bf16: HF time / ours = {bf16_ratio:.2f}×")
        print(f"  ours bf16 vs HF fp32 (each at its default / cheapest): {cross_ratio:.2f}×")
        if beam_ratio < BEAM_MIN:
            failures.append(f"beam search is only {beam_ratio:.2f}× the speed of HF generate in fp32 (< {BEAM_MIN}×)")

    natural, natural_tokens = natural_length(setup, beam_plan, beam_batches, args.device)
    per_sentence = f"  {natural_tokens / n_src:.1f} tokens/sentence"
    print(f"\nfor scale — ours at natural length (real <eos>, the task's limits, α = {setup.alpha}), one pass:")
    print(report_line("beam-5 (ours)", [natural], n_src, natural_tokens) + per_sentence)

    print()
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else f"FAIL ({len(failures)} check(s))")
    if args.quick:
        print("(--quick: few sources and short outputs; the acceptance is stated for the full run)")

    if args.json:
        result = {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
            "device": args.device,
            "threads": torch.get_num_threads(),
            "quick": args.quick,
            "weights": setup.origin,
            "sentences": n_src,
            "greedy": {
                "tokens": greedy_n,
                "passes": greedy_passes,
                "seconds": greedy.seconds,
                "speedup": greedy_ratio,
                "identical": same,
            },
            "beam": {
                "tokens": beam_n,
                "beam_size": BEAM_SIZE,
                "passes": passes,
                "hf_forcing": args.hf_forcing,
                "seconds": beam.seconds,
                "speed_vs_hf": beam_ratio,
                "speed_vs_hf_f_linear": plain_ratio,
                "prepacked_vs_f_linear": prepacked_ratio,
                "sentences_differing_prepacked_vs_f_linear": differ_plain,
                "speed_vs_hf_bf16": bf16_ratio if peer is not None else None,
                "ours_bf16_vs_hf_fp32": cross_ratio if peer is not None else None,
            },
            "natural": {"seconds": natural, "tokens": natural_tokens},
            "failures": failures,
            "passed": not failures,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failures and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
