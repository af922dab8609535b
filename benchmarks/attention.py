"""Forward + backward time and peak memory: heedful's MultiHeadAttention against the alternatives.

    python benchmarks/attention.py                 # everything (about 3-5 minutes on a 2-core CPU)
    python benchmarks/attention.py --quick         # smoke run: 1,024 tokens, T = 128 and 512 (~1 minute)
    python benchmarks/attention.py --device cuda --strict

Four implementations of the same self-attention layer (d_model = 512, 8 heads, q/k/v input
projections and an output projection, a key padding mask with a couple of padded sequences):

  ours   heedful.attention.MultiHeadAttention(packed=True), path="auto" (it picks fused or math
         itself): q, k, v from one (3D, D) Linear whose output is split, as the models'
         self-attention layers are built
  nn     torch.nn.MultiheadAttention(batch_first=True), need_weights=False
  math   the equations written out: softmax(QKᵀ/√d + mask) V, as in nanoGPT's slow path
  sdpa   the same projections around one bare F.scaled_dot_product_attention call

Each case holds B·T = 4,096 tokens at T = 128, 512 and 2,048, in float32 and bfloat16 (modules and
inputs cast to bfloat16). One step is forward, then backward from a fixed output gradient (the
input and all parameters require grad). Steps are interleaved — A, B, C, D, then B, C, D, A, … —
after warm-up rounds, so drifts in machine load hit every implementation alike. The table reports
each layer's median step time, and compares layers by *paired* ratios: in every round, a layer's
step time over ours in that same round, then the median over rounds. On a shared machine whose
speed swings by 2× within seconds, the paired ratio is much steadier than a ratio of medians.

Peak memory. CPU tensors have no allocator statistics in torch, so every (case, implementation)
is measured in a fresh subprocess: it builds the layer and inputs, runs one small warm-up step (so
one-time kernel and thread-pool set-up is not counted), reads its current resident set size (RSS),
runs one full step, and reports the peak RSS during the step minus that baseline. The peak is the
kernel's high-water mark VmHWM, reset to the current RSS just before the step by writing 5 to
/proc/self/clear_refs; where that is not allowed, ``resource.getrusage().ru_maxrss`` stands in,
which also counts import-time peaks and so can only overstate.
The subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so glibc serves every large tensor from
mmap and returns it on free: the RSS then follows live tensors, not the allocator's heap history.
This counts everything the step allocates (activations saved for backward, gradients,
temporaries), the same quantity ``torch.cuda.max_memory_allocated`` gives on a GPU, which is what
``--device cuda`` uses instead (in-process, after ``reset_peak_memory_stats``).

Acceptance (printed as PASS/FAIL; ``--strict`` exits 1 on FAIL):
  * ours is no slower than torch.nn.MultiheadAttention in every case (paired ratio ≥ 0.98: where
    both run the same SDPA kernel they differ by a few percent at most, and 2 % is the resolution
    of this measurement on a noisy machine; the exact ratio is printed);
  * ours is within 10 % of the fastest alternative in every case (paired ratio ≥ 1/1.10);
  * ours' memory is linear in T wherever SDPA's is: at a fixed token count a linear-memory layer
    uses the same memory at every T, a quadratic one grows with T. Wherever SDPA's peak at T stays
    within 1.5× of its peak at the smallest T, ours must stay within 1.5× of its own too.
    (For 16-bit floats on CPU, ours takes the math path up to T_q·T_k = 256², where its memory
    grows as T²; of the cases here only T = 128 lies in that region — see docs/RESULTS.md.)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heedful.attention import MultiHeadAttention, prefer_fused

D_MODEL, N_HEADS = 512, 8
IMPLS = ("ours", "nn", "math", "sdpa")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
SPEED_SLACK = 1.10  # ours within 10 % of the fastest alternative
NOISE = 0.02  # "no slower than nn.MultiheadAttention" allows this much timing noise (see the docstring)
LINEAR_GROWTH = 1.5  # peak(T) / peak(T_min) at a fixed token count below this = linear in T


# ------------------------------------------------------------------------------ the four layers
class PlainMath(nn.Module):
    """Attention written out, as in nanoGPT's slow path; ``keep`` (B, T) is True for real tokens."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.in_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        B, T, D = x.shape
        qkv = self.in_proj(x).view(B, T, 3, self.n_heads, self.d_head)  # (B, T, 3, H, D_h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, H, T, D_h)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d_head))  # (B, H, T, T)
        att = att.masked_fill(~keep[:, None, None, :], float("-inf")).softmax(dim=-1)
        y = att @ v  # (B, H, T, D_h)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class BareSDPA(PlainMath):
    """The same projections around one ``F.scaled_dot_product_attention`` call."""

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        B, T, D = x.shape
        qkv = self.in_proj(x).view(B, T, 3, self.n_heads, self.d_head)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 × (B, H, T, D_h)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class Ours(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.attn = MultiHeadAttention(d_model, n_heads, path="auto", packed=True)  # as the models' self-attention

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        return self.attn(x, key_padding_mask=keep).output


class TorchMHA(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_heads, batch_first=True)

    def forward(self, x: Tensor, keep: Tensor) -> Tensor:
        # nn.MultiheadAttention's key_padding_mask is True where a key is *ignored*.
        return self.attn(x, x, x, key_padding_mask=~keep, need_weights=False)[0]


def build_layers(device: str, dtype: torch.dtype, seed: int = 0) -> dict[str, nn.Module]:
    """The four layers with identical weights, so they compute the same function."""
    torch.manual_seed(seed)
    ours = Ours(D_MODEL, N_HEADS)
    layers: dict[str, nn.Module] = {"ours": ours, "nn": TorchMHA(D_MODEL, N_HEADS)}
    layers["math"], layers["sdpa"] = PlainMath(D_MODEL, N_HEADS), BareSDPA(D_MODEL, N_HEADS)
    src = ours.attn
    packed = {"weight": src.qkv_proj.weight, "bias": src.qkv_proj.bias}
    with torch.no_grad():
        layers["nn"].attn.in_proj_weight.copy_(packed["weight"])
        layers["nn"].attn.in_proj_bias.copy_(packed["bias"])
        layers["nn"].attn.out_proj.load_state_dict(src.out_proj.state_dict())
        for name in ("math", "sdpa"):
            layers[name].in_proj.load_state_dict(packed)
            layers[name].out_proj.load_state_dict(src.out_proj.state_dict())
    return {name: layer.to(device=device, dtype=dtype).train() for name, layer in layers.items()}


@dataclass(frozen=True)
class Case:
    seq_len: int
    batch: int
    dtype_name: str

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def label(self) -> str:
        return f"{self.dtype_name} T={self.seq_len} B={self.batch}"


def make_inputs(case: Case, device: str, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, T, D) requiring grad, keep (B, T) with a couple of padded sequences, output grad."""
    g = torch.Generator().manual_seed(seed)
    B, T = case.batch, case.seq_len
    x = torch.randn(B, T, D_MODEL, generator=g).to(device=device, dtype=case.dtype).requires_grad_()
    lengths = torch.full((B,), T)
    lengths[0] = T // 2  # a couple of padded sequences
    if B > 1:
        lengths[1] = (3 * T) // 4
    keep = (torch.arange(T)[None, :] < lengths[:, None]).to(device)  # (B, T), True = real token
    grad_out = torch.randn(B, T, D_MODEL, generator=g).to(device=device, dtype=case.dtype)
    return x, keep, grad_out


def step_fn(layer: nn.Module, x: Tensor, keep: Tensor, grad_out: Tensor) -> Callable[[], None]:
    def step() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x, keep).backward(grad_out)

    return step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    median: dict[str, float]  # seconds per step
    vs_ours: dict[str, float]  # median over rounds of (its step time / ours in the same round)


def time_case(case: Case, device: str, repeats: int, warmup: int) -> Timing:
    """Forward+backward step times of each layer, steps interleaved round by round."""
    layers = build_layers(device, case.dtype)
    x, keep, grad_out = make_inputs(case, device)
    steps = {name: step_fn(layer, x, keep, grad_out) for name, layer in layers.items()}
    times: dict[str, list[float]] = {name: [] for name in IMPLS}
    for r in range(warmup + repeats):
        order = IMPLS[r % len(IMPLS) :] + IMPLS[: r % len(IMPLS)]  # rotate who goes first
        for name in order:
            sync(device)
            start = time.perf_counter()
            steps[name]()
            sync(device)
            if r >= warmup:
                times[name].append(time.perf_counter() - start)
    return Timing(
        median={name: statistics.median(ts) for name, ts in times.items()},
        vs_ours={
            name: statistics.median(t / t_ours for t, t_ours in zip(ts, times["ours"], strict=True))
            for name, ts in times.items()
        },
    )


def check_agreement(device: str) -> float:
    """All four layers compute the same function: max |output difference| against ours, fp32."""
    case = Case(seq_len=64, batch=4, dtype_name="fp32")
    layers = build_layers(device, torch.float32)
    x, keep, _ = make_inputs(case, device)
    with torch.no_grad():
        outs = {name: layer(x, keep) for name, layer in layers.items()}
    real = keep[:, :, None]  # padded query rows may differ (undefined); compare real tokens only
    return max(float(((outs[n] - outs["ours"]) * real).abs().max()) for n in IMPLS)


# ------------------------------------------------------------------------------------ memory
def _status_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS; False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def measure_memory_here(case: Case, impl: str, device: str) -> float:
    """Peak extra memory (MiB) of one forward+backward step, measured in this process."""
    layer = build_layers(device, case.dtype)[impl]
    small = Case(seq_len=min(case.seq_len, 64), batch=1, dtype_name=case.dtype_name)
    step_fn(layer, *make_inputs(small, device))()  # warm-up: kernel and thread-pool set-up
    layer.zero_grad(set_to_none=True)
    x, keep, grad_out = make_inputs(case, device)
    step = step_fn(layer, x, keep, grad_out)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    reset = _reset_peak_rss()
    base = _status_bytes("VmRSS")
    step()
    # Without the reset, the peak since the process started: may include import-time peaks.
    peak = _status_bytes("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return max(peak - base, 0) / 2**20


def measure_memory(case: Case, impl: str, device: str) -> float:
    if device == "cuda":
        return measure_memory_here(case, impl, device)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    probe = json.dumps({"seq_len": case.seq_len, "batch": case.batch, "dtype": case.dtype_name, "impl": impl})
    done = subprocess.run(
        [sys.executable, __file__, "--memory-probe", probe, "--device", device],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------ report
def ours_path(case: Case, device: str) -> str:
    fused = prefer_fused(torch.device(device), case.dtype, case.seq_len, case.seq_len)
    return "fused" if fused else "math"


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}×"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small sizes, few repeats")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed rounds per case")
    parser.add_argument("--warmup", type=int, default=None, help="untimed rounds per case")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurements")
    parser.add_argument("--strict", action="store_true", help="exit 1 when the acceptance fails")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.memory_probe:  # child process of measure_memory
        spec = json.loads(args.memory_probe)
        case = Case(spec["seq_len"], spec["batch"], spec["dtype"])
        print(measure_memory_here(case, spec["impl"], args.device))
        return 0

    tokens, lengths = (1024, (128, 512)) if args.quick else (4096, (128, 512, 2048))
    repeats = args.repeats or (3 if args.quick else 11)
    warmup = args.warmup or (1 if args.quick else 2)
    cases = [Case(T, tokens // T, name) for name in DTYPES for T in lengths]

    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads; "
        f"d_model={D_MODEL}, heads={N_HEADS}, B·T={tokens}; {repeats} interleaved rounds of "
        f"forward+backward steps after {warmup} warm-up rounds"
    )
    diff = check_agreement(args.device)
    agree = diff < 1e-4
    print(f"agreement check (fp32): max |output − ours| = {diff:.1e} -> {'ok' if agree else 'MISMATCH'}")

    results: dict[Case, Timing] = {}
    memory: dict[Case, dict[str, float]] = {}
    for case in cases:
        results[case] = time_case(case, args.device, repeats, warmup)
        ms = "  ".join(f"{n} {1e3 * t:7.1f} ms" for n, t in results[case].median.items())
        print(f"  {case.label:<20} ours→{ours_path(case, args.device):<5}  {ms}", flush=True)
    if not args.no_memory:
        for case in cases:
            memory[case] = {impl: measure_memory(case, impl, args.device) for impl in IMPLS}
            mib = "  ".join(f"{n} {m:7.1f} MiB" for n, m in memory[case].items())
            print(f"  {case.label:<20} peak  {mib}", flush=True)

    # Acceptance.
    failures: list[str] = [] if agree else ["the four layers do not compute the same function"]
    for case, timing in results.items():
        r = timing.vs_ours
        if r["nn"] < 1 - NOISE:
            failures.append(f"{case.label}: ours takes {1 / r['nn']:.2f}× nn.MultiheadAttention's time")
        fastest = min(IMPLS[1:], key=lambda n: r[n])
        if r[fastest] < 1 / SPEED_SLACK:
            failures.append(f"{case.label}: ours takes {1 / r[fastest]:.2f}× the time of {fastest}")
    if memory:
        for dtype_name in DTYPES:
            series = [c for c in cases if c.dtype_name == dtype_name]
            first = series[0]
            for case in series[1:]:
                sdpa_growth = memory[case]["sdpa"] / memory[first]["sdpa"]
                ours_growth = memory[case]["ours"] / memory[first]["ours"]
                if sdpa_growth <= LINEAR_GROWTH < ours_growth:
                    failures.append(
                        f"{case.label}: ours' memory grows {ours_growth:.2f}× from T={first.seq_len} "
                        f"where SDPA's grows {sdpa_growth:.2f}× (not linear in T)"
                    )

    print()
    print("| case | ours path | ours ms | nn.MHA ms | math ms | SDPA ms | nn/ours | math/ours | SDPA/ours "
          "| ours MiB | nn MiB | math MiB | SDPA MiB |")  # fmt: skip
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
    for case, timing in results.items():
        cells = [case.label, ours_path(case, args.device)]
        cells += [f"{1e3 * timing.median[n]:.1f}" for n in IMPLS]
        cells += [fmt_ratio(timing.vs_ours[n]) for n in IMPLS[1:]]
        cells += [f"{memory[case][n]:.0f}" for n in IMPLS] if memory else ["–"] * 4
        print("| " + " | ".join(cells) + " |")
    print("\nms: median step time. x/ours: median over rounds of x's step time / ours' in the same round "
          "(> 1.00× = x is slower than ours). MiB: peak extra memory of one step.")  # fmt: skip
    print()
    for failure in failures:
        print(f"FAIL: {failure}")
    print("PASS" if not failures else f"FAIL ({len(failures)} check(s))")
    return 1 if failures and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
