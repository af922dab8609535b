"""Training throughput on Multi30k: heedful's Transformer training step against a plain torch.nn.Transformer loop.

    python benchmarks/train_throughput.py                      # full size (a few minutes on a 2-core CPU)
    python benchmarks/train_throughput.py --quick --threads 1  # smoke run: short sentences, 512-token batches (<1 min)
    python benchmarks/train_throughput.py --device cuda --strict --json throughput.json

Three training loops on the same data, of models of equal size (configs/multi30k/transformer.yaml,
``model:`` — d_model 256, 4 heads, 3+3 layers, d_ff 1024, dropout 0.2, sinusoidal positions, one
embedding matrix shared by source, target and output, pre-LN):

  plain      torch.nn.Transformer(norm_first=True, batch_first=True) with one shared nn.Embedding
             (× √d), sinusoidal positions, a tied output Linear, the causal mask from
             nn.Transformer.generate_square_subsequent_mask and src/tgt/memory key padding masks,
             written as a user would: fp32, no autocast, no compile
  ours-fp32  heedful.models.TransformerEncoderDecoder built from that config, trained the way
             heedful.train.Trainer trains it: move_to, autocast(device, precision), task.loss of
             the translate task (logits .float(), then label-smoothed cross-entropy), the trainer's
             AdamW (heedful.train.trainer.adamw: the fused kernel) on parameter_groups, gradient
             clipping with foreach=True as the trainer clips — at precision "fp32"
  ours-bf16  the same at precision "bf16" (torch.autocast to bfloat16), as the Multi30k config trains
  ours-bf16-compiled  (only with ``--compiled``) ours-bf16 with the model compiled in place as
             ``train.compile: true`` does (heedful.train.compile: inductor); its warm-up steps
             include the compilations (a static graph for the first batch shape, then one with
             dynamic shapes), which are not timed

Dropout in ours: on CPU, heedful's fused C kernel (src/heedful/attention/dropout_kernel.c), built
on first use when a C compiler is at hand, as in any heedful training; ``HEEDFUL_CPU_KERNELS=0`` in
the environment times its PyTorch path instead. The output's first line and the JSON say which ran.

Every loop: AdamW (lr 1e-3, betas (0.9, 0.98), weight decay 0.01), cross-entropy with label
smoothing 0.1 ignoring <pad>, gradient norm clipped to 1.0; one step = forward, loss, backward,
clip, optimizer step, zero grad (the trainer's learning-rate schedule and weight average are left
out: they are the same few cheap lines for any model).

Data: the Multi30k en→de training pairs (``--data-root``), encoded with the joint sentencepiece
model that the Multi30k run saved (``--tokenizer-dir``; when that folder is missing, one is
trained here on the same text, as the task would, and the output says so), length-filtered
(data.max_tokens, data.max_ratio) and cut into batches of at most ``data.batch_tokens`` = 4,096
tokens per side, padding included, by the project's own heedful.data.parallel.TokenBatches with
the translate task's collate — so the batches are exactly those the trainer would see. The same
batches, in the same order, go to every loop: after warm-up steps, in round r each loop trains on
batches r·K … r·K + K − 1 (K = ``--steps-per-round``), and the loops take turns, the order
rotating every round — plain, ours-fp32, ours-bf16, then ours-fp32, ours-bf16, plain, … — so drifts
in machine load hit every loop alike. Batch collation happens before timing; the timed step
starts with moving the batch to the device.

Kernels built per shape (``--warm-shapes``). On CPU, PyTorch runs bf16 matmuls on oneDNN, which
builds a kernel (a primitive) the first time it meets a matrix shape and keeps it in a cache of
1,024; token batches change the row count B·T from batch to batch. Counted with
``ONEDNN_VERBOSE=2``: 40 training steps of ours in bf16 built 420 primitives in 1.28 s; the same 40
batches again built none. Most of that time went to the vocabulary projection, whose row count
(the batch's real target tokens) is new nearly every batch; the loss now rounds those rows up
(heedful.nn.losses), and 40 other steps built 305 primitives in 0.50 s where the code before
built 369 in 1.16 s. A training run meets each of its batch shapes many times (Multi30k: 31
shapes in an epoch's 120 batches, the same every epoch) and builds their kernels in its first
epoch, but the rounds here meet most of their shapes for the first time. With ``--warm-shapes``
every loop first takes one untimed step on one batch of each shape the rounds will time, so the
building is left out of the timing — as the compiled loop's compilations are. float32 matmuls
(MKL) build nothing per shape. The default leaves the building in the timing, as every figure in
docs/RESULTS.md does unless it names ``--warm-shapes`` (there the difference was within the
host's drift).

Figures. Throughput is target tokens per second: the non-<pad> tokens of the batches' tgt_out
(what the loss is averaged over, the task's ``weight``), over the time of the round's K steps;
every loop is counted the same way. The table gives each loop's median over rounds and its
*paired* ratio to plain: in every round, its tokens/s over plain's in that same round, then the
median over rounds (on a shared machine whose speed swings within seconds, much steadier than a
ratio of medians).

Fraction of the matmul peak. Every round also times a large square matmul (``--matmul-size`` = 2048,
best of 3) in bfloat16 and in float32: the machine's attainable matmul GFLOP/s in that round. The
model's training FLOPs per step are counted on the padded batch, as the kernels compute it
(B rows, S source and T target positions; L_e, L_d layers; D width; F = d_ff; V vocabulary):

    FLOPs = 6 · [ B·S · (L_e·(4D² + 2DF) + L_d·2D²)  +  B·T · (L_d·(6D² + 2DF) + DV) ]
          + 12 · B · D · [ L_e·S² + L_d·(T² + T·S) ]

— 2 FLOPs per multiply-add, ×3 for training (forward; backward to inputs and to weights). The
first line is every weight matmul: per source token the encoder's q, k, v, out projections and
FFN, and each decoder layer's cross-attention k, v of the memory; per target token the decoder's
self-attention q, k, v, out, cross-attention q, out, FFN, and the output projection to V. The
second is QKᵀ and attention × V (2·T_q·T_k·D each in the forward, all heads together), counting
the full causal square. Embedding lookups, softmax, norms and the optimizer are not counted: the
fraction says how close the step comes to doing nothing but matmuls at the machine's speed.
Achieved GFLOP/s = FLOPs of the round's K steps / their time; the fraction is paired too, the
median over rounds of (achieved / that round's matmul GFLOP/s), fp32 loops against the fp32
matmul, ours-bf16 against the bf16 one.

Page faults. Every round also counts each loop's minor page faults per step (``getrusage``; the
loops run one at a time, so the process's count is the loop's; not on Windows). A step that
allocates fresh memory has the kernel map every new page at first touch; on a virtual machine
that cost moves with the host's load, and with it the time of a loop that faults a lot — the
plain loop makes several times ours (docs/RESULTS.md), so its speed, and the ratio, drift with it.

Acceptance (printed as PASS/FAIL; ``--strict`` exits 1 on FAIL):
  * ours (bf16) reaches ≥ 2× the target tokens/s of plain fp32 (paired ratio; the issue's
    training-throughput target);
  * the comparison is of equal models: plain and ours have the same number of parameters.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

with contextlib.suppress(ImportError):  # Unix only: page faults are then not counted
    import resource

from heedful.attention import cpu_kernel
from heedful.config import TrainConfig
from heedful.data.parallel import ParallelFiles, TokenBatches, fit_for_training, read_text_pair
from heedful.data.tokenizers import SentencePieceTokenizer, Tokenizer, load_tokenizers
from heedful.device import autocast, move_to
from heedful.models import TransformerConfig, TransformerEncoderDecoder
from heedful.runs import load_config
from heedful.tasks.base import Batch
from heedful.tasks.translate import TranslateConfig, TranslateTask
from heedful.tasks.translate_data import length_cap
from heedful.train.compile import compile_model
from heedful.train.trainer import adamw, parameter_groups

# torch.nn.MultiheadAttention turns a bool key padding mask into a float one beside the float causal
# mask anyway; it only warns that mixing the two types is deprecated.
warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs/multi30k/transformer.yaml"
TOKENIZER_DIR = REPO / "runs/multi30k-transformer/model"
IMPLS = ("plain", "ours-fp32", "ours-bf16")
PRECISION = {"plain": "fp32", "ours-fp32": "fp32", "ours-bf16": "bf16", "ours-bf16-compiled": "bf16"}
TARGET = 2.0  # ours (bf16) / plain fp32, target tokens per second
QUICK_PAIRS, QUICK_MAX_TOKENS, QUICK_BATCH_TOKENS = 2000, 24, 512


# ------------------------------------------------------------------------------------------ data
def get_tokenizer(directory: Path, cfg: TranslateConfig, sentences: list[str]) -> tuple[Tokenizer, str]:
    """The run's joint tokenizer, or — when its folder is missing — one trained here on ``sentences``."""
    if (directory / "tokenizers.json").is_file():
        src_tok, tgt_tok = load_tokenizers(directory)
        if len(src_tok) != len(tgt_tok):
            raise SystemExit(f"{directory}: source and target vocabularies differ; the models here share one")
        return tgt_tok, f"loaded from {directory}"
    t = cfg.data.tokenizer
    tok = SentencePieceTokenizer.train(
        sentences,
        vocab_size=t.vocab_size,
        model_type=t.model_type,
        character_coverage=t.character_coverage,
        normalization=t.normalization,
    )
    return tok, f"TRAINED HERE on {len(sentences)} sentences ({directory} does not exist yet)"


def token_batches(
    task: TranslateTask, pairs: list[tuple[list[int], list[int]]], files: ParallelFiles, batch_tokens: int,
    max_tokens: int | None,
) -> TokenBatches:  # fmt: skip
    """What the translate task's ``_train_batches`` builds, with the same functions: filter by
    length, size by the wider side (tgt_in/tgt_out are one longer than the target), batch by
    tokens, collate with the task."""
    cap = length_cap(max_tokens, task.cfg.model.max_len)
    encoded, sizes, _ = fit_for_training(
        pairs, files, max_tokens=cap, max_ratio=task.cfg.data.max_ratio, batch_tokens=batch_tokens
    )
    return TokenBatches(sizes, batch_tokens, task.cfg.seed, lambda indices: task.collate([encoded[i] for i in indices]))


def take(source: TokenBatches, n: int) -> list[Batch]:
    """The first ``n`` training batches, epoch after epoch."""

    def stream() -> Iterator[Batch]:
        epoch = 0
        while True:
            yield from source.batches(epoch)
            epoch += 1

    batches = stream()
    return [next(batches) for _ in range(n)]


# ------------------------------------------------------------------------------ the plain model
class PlainTransformer(nn.Module):
    """What a user writes around ``torch.nn.Transformer`` for translation with a joint vocabulary."""

    def __init__(self, m: TransformerConfig):
        super().__init__()
        self.pad_id, self.scale = m.pad_id, math.sqrt(m.d_model)
        self.embedding = nn.Embedding(m.tgt_vocab_size, m.d_model, padding_idx=m.pad_id)
        nn.init.normal_(self.embedding.weight, std=m.d_model**-0.5)
        with torch.no_grad():
            self.embedding.weight[m.pad_id].zero_()
        position = torch.arange(m.max_len)[:, None]  # (L, 1)
        inv_freq = torch.exp(torch.arange(0, m.d_model, 2) * (-math.log(10000.0) / m.d_model))
        pe = torch.zeros(m.max_len, m.d_model)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(position * inv_freq), torch.cos(position * inv_freq)
        self.register_buffer("pe", pe, persistent=False)  # (L, D)
        self.dropout = nn.Dropout(m.dropout)
        with warnings.catch_warnings():  # "enable_nested_tensor is True, but … norm_first was True"
            warnings.simplefilter("ignore", UserWarning)
            self.transformer = nn.Transformer(
                d_model=m.d_model,
                nhead=m.n_heads,
                num_encoder_layers=m.n_encoder_layers,
                num_decoder_layers=m.n_decoder_layers,
                dim_feedforward=m.d_ff,
                dropout=m.dropout,
                batch_first=True,
                norm_first=True,
            )
        self.output = nn.Linear(m.d_model, m.tgt_vocab_size, bias=False)
        self.output.weight = self.embedding.weight

    def embed(self, tokens: Tensor) -> Tensor:
        x = self.embedding(tokens) * self.scale + self.pe[: tokens.shape[1]]  # (B, T) -> (B, T, D)
        return self.dropout(x)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        src_pad, tgt_pad = src == self.pad_id, tgt_in == self.pad_id  # (B, S), (B, T): True = ignore
        causal = nn.Transformer.generate_square_subsequent_mask(tgt_in.shape[1], device=tgt_in.device)  # (T, T)
        h = self.transformer(
            self.embed(src),
            self.embed(tgt_in),
            tgt_mask=causal,
            src_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_pad,
            memory_key_padding_mask=src_pad,
        )  # (B, T, D)
        return self.output(h)  # (B, T, V)


# ------------------------------------------------------------------------------------ the steps
@dataclass(frozen=True)
class Hyper:
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    label_smoothing: float
    clip: float


def plain_step(model: PlainTransformer, hp: Hyper, device: torch.device) -> Callable[[Batch], float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=hp.lr, betas=hp.betas, weight_decay=hp.weight_decay)

    def step(batch: Batch) -> float:
        src, tgt_in, tgt_out = (batch[k].to(device) for k in ("src", "tgt_in", "tgt_out"))
        logits = model(src, tgt_in)  # (B, T, V)
        loss = F.cross_entropy(
            logits.flatten(0, 1), tgt_out.flatten(), ignore_index=model.pad_id, label_smoothing=hp.label_smoothing
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), hp.clip)
        optimizer.step()
        return float(loss.detach())

    return step


def our_step(
    task: TranslateTask, model: nn.Module, tc: TrainConfig, device: torch.device, precision: str
) -> Callable[[Batch], float]:
    """One step of heedful.train.Trainer._loop (grad_accum 1), with the trainer's own helpers: its
    optimizer (``adamw``: the fused kernel) and its foreach gradient clipping."""
    optimizer = adamw(parameter_groups(model, tc.weight_decay), tc, device)
    clip = tc.clip_grad_norm or math.inf

    def step(batch: Batch) -> float:
        batch = move_to(batch, device)
        with autocast(device, precision):
            loss, _ = task.loss(model, batch)
        if not torch.isfinite(loss):
            raise RuntimeError(f"loss became {loss.item()}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


# ---------------------------------------------------------------------------------------- FLOPs
def train_flops(m: TransformerConfig, batch: Batch) -> float:
    """Training FLOPs of one step on this padded batch (the formula in the module docstring)."""
    (B, S), T = batch["src"].shape, batch["tgt_in"].shape[1]
    D, F_, V, L_e, L_d = m.d_model, m.d_ff, m.tgt_vocab_size, m.n_encoder_layers, m.n_decoder_layers
    per_source_token = L_e * (4 * D * D + 2 * D * F_) + L_d * 2 * D * D
    per_target_token = L_d * (6 * D * D + 2 * D * F_) + D * V
    weights = 6 * (B * S * per_source_token + B * T * per_target_token)
    attention = 12 * B * D * (L_e * S * S + L_d * (T * T + T * S))
    return float(weights + attention)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(a: Tensor, b: Tensor, device: torch.device, repeats: int = 3) -> float:
    """Best-of-``repeats`` GFLOP/s of ``a @ b`` (square, n × n)."""
    n, best = a.shape[0], math.inf
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


# ---------------------------------------------------------------------------------------- report
def minor_faults() -> int | None:
    """This process's minor page faults so far (None where ``resource`` is missing)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt if "resource" in globals() else None


def paired_median(values: list[float], reference: list[float]) -> float:
    return statistics.median(v / r for v, r in zip(values, reference, strict=True))


def dropout_implementation(device: str) -> str:
    """Which dropout ours runs: the fused C kernel (CPU, compiler at hand) or PyTorch's ops."""
    if torch.device(device).type != "cpu":
        return "F.dropout"
    return "fused C kernel" if cpu_kernel.load() is not None else "PyTorch passes (no kernel)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: short sentences, small batches, few rounds")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 8; quick 3)")
    parser.add_argument("--steps-per-round", type=int, default=None, help="batches per loop per round (4; quick 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per loop first (3; quick 1)")
    parser.add_argument(
        "--batch-tokens", type=int, default=None, help="tokens per batch and side (config's; quick 512)"
    )
    parser.add_argument("--matmul-size", type=int, default=None, help="n of the n×n matmul peak (2048; quick 1024)")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the Multi30k Transformer config")
    parser.add_argument("--data-root", type=Path, default=None, help="Multi30k folder (default: the config's)")
    parser.add_argument("--tokenizer-dir", type=Path, default=TOKENIZER_DIR, help="a run's model folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the acceptance fails")
    parser.add_argument(
        "--compiled", action="store_true", help="add a fourth loop: ours-bf16 with train.compile (inductor)"
    )
    parser.add_argument(
        "--warm-shapes",
        action="store_true",
        help="also warm every loop up on one batch of each batch shape the rounds will time, so kernels "
        "built per shape (oneDNN's bf16 matmuls on CPU) are built before the timing, as a training run's "
        "are after its first epoch",
    )
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rounds = args.rounds or (3 if args.quick else 8)
    per_round = args.steps_per_round or (2 if args.quick else 4)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    matmul_n = args.matmul_size or (1024 if args.quick else 2048)

    # Data, tokenizer and batches, as the translate task builds them.
    cfg = load_config(args.config)
    if not isinstance(cfg, TranslateConfig) or not isinstance(cfg.model, TransformerConfig):
        parser.error(f"{args.config}: expected a translate config with a Transformer model")
    root = args.data_root or REPO / (cfg.data.root or Path())  # the config's root is relative to the repository
    d = cfg.data
    train_files = ParallelFiles("text", (root / f"train.{d.source_lang}.gz", root / f"train.{d.target_lang}.gz"))
    pairs = read_text_pair(*train_files.paths)
    if args.quick:
        pairs = pairs[:QUICK_PAIRS]
    tok, tok_note = get_tokenizer(args.tokenizer_dir, cfg, [p.source for p in pairs] + [p.target for p in pairs])
    task = TranslateTask(cfg)
    task.src_tok = task.tgt_tok = tok
    encoded = [(tok.encode(p.source), tok.encode(p.target)) for p in pairs]
    batch_tokens = args.batch_tokens or (QUICK_BATCH_TOKENS if args.quick else d.batch_tokens)
    source = token_batches(task, encoded, train_files, batch_tokens, QUICK_MAX_TOKENS if args.quick else d.max_tokens)
    batches = take(source, warmup + rounds * per_round)

    # Three models of one size, each with its own optimizer.
    sizes = {"src_vocab_size": len(tok), "tgt_vocab_size": len(tok), "pad_id": tok.pad_id}
    m = cfg.model.model_validate(cfg.model.model_dump() | sizes)
    t = cfg.train
    hp = Hyper(t.lr, t.betas, t.weight_decay, t.label_smoothing, t.clip_grad_norm or math.inf)
    torch.manual_seed(cfg.seed)
    plain = PlainTransformer(m).to(device).train()
    models: dict[str, nn.Module] = {"plain": plain}
    steps = {"plain": plain_step(plain, hp, device)}
    impls = (*IMPLS, "ours-bf16-compiled") if args.compiled else IMPLS
    for name in impls[1:]:
        torch.manual_seed(cfg.seed)
        models[name] = TransformerEncoderDecoder(m).to(device).train()
        if name.endswith("-compiled") and (reason := compile_model(models[name], device)) is not None:
            parser.error(f"--compiled: {reason}")
        steps[name] = our_step(task, models[name], t, device, PRECISION[name])
    n_params = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}

    tokens = [int((b["tgt_out"] != tok.pad_id).sum()) for b in batches]
    flops = [train_flops(m, b) for b in batches]
    timed = batches[warmup:]
    dropout_path = dropout_implementation(args.device)
    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}; ours' dropout: {dropout_path}"
    )
    print(f"tokenizer: sentencepiece, {len(tok)} pieces, {tok_note}")
    print(
        f"data: {len(pairs)} pairs from {root.resolve()}, {source.steps_per_epoch()} batches/epoch of ≤ {batch_tokens} "
        f"tokens per side; timed: {len(timed)} batches, {sum(tokens[warmup:])} target tokens "
        f"({sum(b['tgt_out'].numel() for b in timed)} with padding)"
    )
    print(
        f"model: {m.n_encoder_layers}+{m.n_decoder_layers} layers × {m.d_model} wide, {m.n_heads} heads, "
        f"d_ff {m.d_ff}; parameters: " + ", ".join(f"{n} {c:,}" for n, c in n_params.items())
    )
    if args.quick:
        print(
            f"QUICK: the first {QUICK_PAIRS} pairs, ≤ {QUICK_MAX_TOKENS} tokens, {batch_tokens}-token batches — "
            "a smoke test: per-step overheads weigh more than at full size, so these are not the acceptance figures"
        )
    print(
        f"{warmup} warm-up step(s) per loop, then {rounds} interleaved rounds of {per_round} steps per loop; "
        f"matmul peak: {matmul_n}² best of 3 per round",
        flush=True,
    )

    # Matmul operands for the per-round peak.
    g = torch.Generator().manual_seed(0)
    operands = {
        dtype: tuple(torch.randn(matmul_n, matmul_n, generator=g).to(device=device, dtype=dtype) for _ in range(2))
        for dtype in (torch.float32, torch.bfloat16)
    }
    first_loss: dict[str, float] = {}
    warm = batches[:warmup]
    if args.warm_shapes:  # after the usual warm-up steps, one batch of each shape to come
        shapes = {(tuple(b["src"].shape), tuple(b["tgt_in"].shape)): b for b in reversed(timed)}
        warm = warm + list(shapes.values())
        print(f"--warm-shapes: {len(shapes)} batch shapes among the timed batches, one untimed step each", flush=True)
    for name in impls:
        for batch in warm:
            loss = steps[name](batch)
            first_loss.setdefault(name, loss)
    for a, b in operands.values():
        matmul_gflops(a, b, device, repeats=1)

    # Timed rounds: the same K batches for every loop, the order rotating.
    seconds: dict[str, list[float]] = {name: [] for name in impls}
    faults: dict[str, list[float]] = {name: [] for name in impls}  # minor page faults per step, per round
    peak: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for r in range(rounds):
        peak["fp32"].append(matmul_gflops(*operands[torch.float32], device))
        peak["bf16"].append(matmul_gflops(*operands[torch.bfloat16], device))
        chunk = timed[r * per_round : (r + 1) * per_round]
        order = impls[r % len(impls) :] + impls[: r % len(impls)]
        for name in order:
            sync(device)
            faults_before, start = minor_faults(), time.perf_counter()
            for batch in chunk:
                loss = steps[name](batch)
                first_loss.setdefault(name, loss)
            sync(device)
            seconds[name].append(time.perf_counter() - start)
            if faults_before is not None:
                faults[name].append((minor_faults() - faults_before) / len(chunk))
        line = "  ".join(f"{n} {s[-1]:6.2f} s" for n, s in seconds.items())
        print(f"  round {r + 1}/{rounds}: {line}  (matmul fp32 {peak['fp32'][-1]:.0f}, "
              f"bf16 {peak['bf16'][-1]:.0f} GFLOP/s)", flush=True)  # fmt: skip

    round_tokens = [sum(tokens[warmup + r * per_round : warmup + (r + 1) * per_round]) for r in range(rounds)]
    round_flops = [sum(flops[warmup + r * per_round : warmup + (r + 1) * per_round]) for r in range(rounds)]
    tps = {n: [k / s for k, s in zip(round_tokens, secs, strict=True)] for n, secs in seconds.items()}
    gflops = {n: [f / s / 1e9 for f, s in zip(round_flops, secs, strict=True)] for n, secs in seconds.items()}
    figures = {
        name: {
            "precision": PRECISION[name],
            "target_tokens_per_s": statistics.median(tps[name]),
            "vs_plain": paired_median(tps[name], tps["plain"]),
            "gflops": statistics.median(gflops[name]),
            "fraction_of_matmul_peak": paired_median(gflops[name], peak[PRECISION[name]]),
            "parameters": n_params[name],
            "first_loss": first_loss[name],
            "round_seconds": seconds[name],
            "page_faults_per_step": statistics.median(faults[name]) if faults[name] else None,
            "round_page_faults_per_step": faults[name],
        }
        for name in impls
    }

    ratio = figures["ours-bf16"]["vs_plain"]
    checks = {  # label -> (passed, what was measured)
        f"ours (bf16) ≥ {TARGET:.0f}× plain fp32": (ratio >= TARGET, f"{ratio:.2f}× in target tokens/s"),
        "equal models": (
            len(set(n_params.values())) == 1,
            ", ".join(f"{n} {c:,}" for n, c in n_params.items()) + " parameters",
        ),
    }
    failures = [label for label, (ok, _) in checks.items() if not ok]

    print()
    print(
        "| loop | precision | target tok/s | vs plain | GFLOP/s | % of matmul peak | page faults per step "
        "| loss at step 1 |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|")
    for name, f in figures.items():
        pages = "n/a" if f["page_faults_per_step"] is None else f"{f['page_faults_per_step']:,.0f}"
        print(
            f"| {name} | {f['precision']} | {f['target_tokens_per_s']:,.0f} | {f['vs_plain']:.2f}× "
            f"| {f['gflops']:.1f} | {100 * f['fraction_of_matmul_peak']:.1f} % of {f['precision']} "
            f"| {pages} | {f['first_loss']:.2f} |"
        )
    mm = {p: statistics.median(v) for p, v in peak.items()}
    print(
        f"\nmatmul peak ({matmul_n}²), median over rounds: fp32 {mm['fp32']:.0f} GFLOP/s, bf16 {mm['bf16']:.0f} "
        "GFLOP/s. tok/s: non-pad target tokens per second, median over rounds. vs plain: median over rounds "
        "of (tok/s / plain's tok/s in the same round). GFLOP/s: model training FLOPs (see the docstring) per "
        "second; % of peak: median over rounds of (GFLOP/s / the same round's matmul GFLOP/s). Page faults: "
        "minor faults per step, median over rounds."
    )
    print(
        f"gain of each part: bf16 over fp32 (ours) {paired_median(tps['ours-bf16'], tps['ours-fp32']):.2f}×, "
        f"ours over plain (fp32) {figures['ours-fp32']['vs_plain']:.2f}×"
    )
    print()
    for label, (ok, detail) in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}: {label} ({detail})")
    print("PASS" if not failures else f"FAIL ({len(failures)} of {len(checks)} checks)")

    if args.json:
        record = {
            "torch": torch.__version__,
            "device": args.device,
            "threads": torch.get_num_threads(),
            "dropout": dropout_path,
            "quick": args.quick,
            "tokenizer": tok_note,
            "batch_tokens": batch_tokens,
            "rounds": rounds,
            "steps_per_round": per_round,
            "warmup": warmup,
            "warm_shapes": args.warm_shapes,
            "round_target_tokens": round_tokens,
            "round_flops": round_flops,
            "matmul_size": matmul_n,
            "matmul_gflops": peak,
            "loops": figures,
            "checks": {label: {"pass": ok, "measured": detail} for label, (ok, detail) in checks.items()},
            "pass": not failures,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 1 if failures and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
