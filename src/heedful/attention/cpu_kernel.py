"""heedful's CPU kernels in C, compiled once per host and loaded with ctypes:

* dropout_kernel.c — dropout (and ReLU-dropout) in one pass. PyTorch's eager ops cost several
  passes over the tensor (a draw, integer passes for the mask, the product, and the stored mask
  read again in backward); a bf16 Transformer training step on 2 cores spent about a fifth of its
  time there. One C loop draws, tests and scales at about the cost of one multiplication, and its
  backward re-draws the mask from the seed instead of storing it.
* decode_attention.c — one decoding step of attention over a key/value cache, one query a row
  (float32 or bfloat16): each of beam search's hypotheses reads only its own keys, scores, softmax
  and weighted sum in one pass, where PyTorch's path runs tiny batched matmuls over every
  hypothesis's keys and masks.
* beam_candidates.c — beam search's n best continuations of each sentence, read from the float32
  logits in two passes that stay in cache, where PyTorch's path writes all (B·k, V)
  log-probabilities and reads them again to pick among them.

The sources ship with the package and are compiled on first use with the system's C compiler
(``$CC``, else ``cc``), for this machine's CPU (``-march=native``), into one library in
``$HEEDFUL_CACHE_DIR`` (default ``$XDG_CACHE_HOME/heedful`` or ``~/.cache/heedful``) under a name
that hashes the sources, the flags and the CPU, so a home directory shared by different machines
keeps one build per CPU. It links the OpenMP runtime PyTorch has loaded (torch/lib/libgomp), so the
kernels' threads are PyTorch's own pool — a second runtime would spin against it.

When there is no compiler, or the build fails, :func:`load` returns None after one warning saying
why, and dropout and beam search take their PyTorch paths, which compute the same;
``HEEDFUL_CPU_KERNELS=0`` chooses those paths without a warning.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCES = tuple(
    Path(__file__).with_name(name) for name in ("dropout_kernel.c", "decode_attention.c", "beam_candidates.c")
)
HEADERS = (Path(__file__).with_name("cpu_math.h"),)  # included by the sources: part of what a build is of
# Tried in order: AVX-512 hosts run the 512-bit loops (about 1.4× the 256-bit default's speed on a
# bf16 (292, 14, 1024) tensor here, in a throwaway probe); a compiler or CPU without an option falls to the next set.
FLAG_SETS = (
    ["-O3", "-march=native", "-mprefer-vector-width=512"],
    ["-O3", "-march=native"],
    ["-O3"],
)
ENABLE_ENV = "HEEDFUL_CPU_KERNELS"


def cache_dir() -> Path:
    if os.environ.get("HEEDFUL_CACHE_DIR"):
        return Path(os.environ["HEEDFUL_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "heedful"


def _cpu_identity() -> str:
    """What -march=native compiles for: the CPU's model and feature flags (first processor)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.machine() + platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    return platform.machine() + "".join(line for line in lines[:40] if line.startswith(wanted))


def _torch_openmp() -> list[str]:
    """Link arguments for PyTorch's own OpenMP runtime: its libgomp by path (and as rpath), or, where
    PyTorch ships none, the compiler's default runtime."""
    found = sorted(glob.glob(str(Path(torch.__file__).parent / "lib" / "libgomp*.so*")))
    return [found[0], f"-Wl,-rpath,{Path(found[0]).parent}"] if found else ["-fopenmp"]


def _build(compiler: list[str], flags: list[str], target: Path) -> str | None:
    """Compile (with OpenMP's pragmas), then link against :func:`_torch_openmp` only — linking with
    -fopenmp would add the system's libgomp beside PyTorch's. None when built, else why not."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built beside the target and renamed into place: ranks of one torchrun job may build at once.
        with tempfile.TemporaryDirectory(dir=target.parent) as work:
            objects = [Path(work) / f"{source.stem}.o" for source in SOURCES]
            lib = Path(work) / "kernels.so"
            steps = [
                (source, [*compiler, *flags, "-fopenmp", "-fPIC", "-c", str(source), "-o", str(obj)])
                for source, obj in zip(SOURCES, objects, strict=True)
            ]
            steps.append((None, [*compiler, "-shared", *map(str, objects), "-o", str(lib), *_torch_openmp()]))
            for source, step in steps:
                done = subprocess.run(step, capture_output=True, text=True, timeout=120)
                if done.returncode != 0:
                    said = (done.stderr or done.stdout).strip().splitlines()
                    what = source.name if source else "the kernels' library"
                    return f"{shlex.join(compiler)} could not build {what}" + (f" ({said[0]})" if said else "")
            os.replace(lib, target)
    except OSError as error:
        return f"cannot build in {target.parent} ({error})"
    except subprocess.TimeoutExpired:
        return f"{shlex.join(compiler)} took over 120 s on {', '.join(s.name for s in SOURCES)}"
    return None


def _signatures(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, u64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_int32, ctypes.c_float
    for name in ("heedful_dropout_bf16", "heedful_dropout_f32"):
        getattr(lib, name).argtypes = [p, p, i64, u64, i32, f32, i32, i32]
    for name in ("heedful_gate_bf16", "heedful_gate_f32"):
        getattr(lib, name).argtypes = [p, p, p, i64, f32, i32]
    # q, its row and head strides; k, v, their source and head strides; lineage and its two strides;
    # key_ok and its source stride; out; n, g, H, T, D; scale; the newest k, v (or NULL) and their
    # four strides, an int64 array: k's row and head, v's row and head; each source's buffer row or
    # NULL (decode_attention.c)
    strided = [p, i64, i64, p, p, i64, i64, p, i64, i64, p, i64, p]
    for name in ("heedful_decode_attention_f32", "heedful_decode_attention_bf16"):
        getattr(lib, name).argtypes = [*strided, i64, i64, i64, i64, i64, f32, p, p, p, p]
    # logits and their row stride, scores; B, k, V, n, banned; top, beam_of, token_of (beam_candidates.c)
    lib.heedful_beam_candidates_f32.argtypes = [p, i64, p, i64, i64, i64, i64, i64, p, p, p]
    return lib


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel, building it on the first call of this host; None where it can't be had."""
    if os.environ.get(ENABLE_ENV, "1") == "0":
        return None
    compiler = shlex.split(os.environ.get("CC") or "cc")
    source = b"".join(path.read_bytes() for path in (*SOURCES, *HEADERS))
    if not compiler or shutil.which(compiler[0]) is None:
        return _unavailable(f"no C compiler ({shlex.join(compiler)!r} is not on PATH; set CC to one)")
    host = (repr((compiler, _torch_openmp())) + _cpu_identity()).encode()  # what a build is valid for
    failure = None
    for flags in FLAG_SETS:
        key = hashlib.sha256(source + host + repr(flags).encode())
        target = cache_dir() / f"kernels-{key.hexdigest()[:16]}.so"
        if target.exists() or (failure := _build(compiler, flags, target)) is None:
            try:
                return _signatures(ctypes.CDLL(str(target)))
            except OSError as error:
                return _unavailable(f"{target} did not load ({error}); delete it to build it again")
    return _unavailable(failure)


def _unavailable(reason: str) -> None:
    warnings.warn(
        f"heedful: the CPU kernels in C are unavailable: {reason}; dropout and beam search's attention and "
        f"candidates take their slower PyTorch paths (set {ENABLE_ENV}=0 to silence this)",
        RuntimeWarning,
        stacklevel=3,
    )
    return None
