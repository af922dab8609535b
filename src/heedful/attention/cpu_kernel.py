"""The fused CPU dropout kernel (dropout_kernel.c): compiled once per host, loaded with ctypes.

Why C: dropout in PyTorch's eager ops costs several passes over the tensor (a draw, integer passes
for the mask, the product, and the stored mask read again in backward); a bf16 Transformer training
step on 2 cores spent about a fifth of its time there. One C loop draws, tests and scales in a
single pass, at about the cost of one multiplication, and its backward re-draws the mask from the
seed instead of storing it.

The source ships with the package and is compiled on first use with the system's C compiler
(``$CC``, else ``cc``), for this machine's CPU (``-march=native``), into
``$HEEDFUL_CACHE_DIR`` (default ``$XDG_CACHE_HOME/heedful`` or ``~/.cache/heedful``) under a name
that hashes the source, the flags and the CPU, so a home directory shared by different machines
keeps one build per CPU. It links the OpenMP runtime PyTorch has loaded (torch/lib/libgomp), so the
kernel's threads are PyTorch's own pool — a second runtime would spin against it.

When there is no compiler (or ``HEEDFUL_CPU_KERNELS=0``), :func:`load` returns None after one
warning and dropout takes its PyTorch path, which gives the same keep rate and scale.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("dropout_kernel.c")
# Tried in order: AVX-512 hosts run the 512-bit loops (twice the 256-bit default's speed here);
# a compiler or CPU without an option falls to the next set.
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


def _build(compiler: str, flags: list[str], target: Path) -> bool:
    """Compile (with OpenMP's pragmas), then link against :func:`_torch_openmp` only — linking with
    -fopenmp would add the system's libgomp beside PyTorch's."""
    target.parent.mkdir(parents=True, exist_ok=True)
    # Built beside the target and renamed into place: ranks of one torchrun job may build at once.
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        obj, lib = Path(work) / "kernel.o", Path(work) / "kernel.so"
        steps = (
            [compiler, *flags, "-fopenmp", "-fPIC", "-c", str(SOURCE), "-o", str(obj)],
            [compiler, "-shared", str(obj), "-o", str(lib), *_torch_openmp()],
        )
        try:
            if all(subprocess.run(step, capture_output=True, timeout=120).returncode == 0 for step in steps):
                os.replace(lib, target)
                return True
        except (OSError, subprocess.TimeoutExpired):
            pass
    return False


def _signatures(lib: ctypes.CDLL) -> ctypes.CDLL:
    p, i64, u64, i32, f32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_uint64, ctypes.c_int32, ctypes.c_float
    for name in ("heedful_dropout_bf16", "heedful_dropout_f32"):
        getattr(lib, name).argtypes = [p, p, i64, u64, i32, f32, i32, i32]
    for name in ("heedful_gate_bf16", "heedful_gate_f32"):
        getattr(lib, name).argtypes = [p, p, p, i64, f32, i32]
    return lib


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled kernel, building it on the first call of this host; None where it can't be had."""
    if os.environ.get(ENABLE_ENV, "1") == "0":
        return None
    compiler = os.environ.get("CC") or "cc"
    source = SOURCE.read_bytes()
    if shutil.which(compiler) is None:
        return _unavailable(f"no C compiler ({compiler!r} is not on PATH)")
    for flags in FLAG_SETS:
        key = hashlib.sha256(source + repr((compiler, flags, _torch_openmp())).encode() + _cpu_identity().encode())
        target = cache_dir() / f"dropout_kernel-{key.hexdigest()[:16]}.so"
        if target.exists() or _build(compiler, flags, target):
            try:
                return _signatures(ctypes.CDLL(str(target)))
            except OSError as error:
                return _unavailable(f"{target} did not load ({error})")
    return _unavailable(f"{compiler} could not compile {SOURCE.name}")


def _unavailable(reason: str) -> None:
    warnings.warn(
        f"heedful: the fused CPU dropout kernel is unavailable: {reason}; dropout uses the slower "
        f"PyTorch path (set {ENABLE_ENV}=0 to silence this)",
        RuntimeWarning,
        stacklevel=3,
    )
    return None
