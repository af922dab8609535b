"""Data-parallel training on PyTorch's own engine: ``torchrun`` starts the processes,
``DistributedDataParallel`` averages the gradients. This file is the whole seam (nanoGPT keeps
its own in a few lines of train.py); the trainer calls it in six places:

1. ``Dist.start(device)``: a process launched by torchrun (``WORLD_SIZE`` > 1 in its
   environment) joins the process group — gloo on CPU, NCCL on CUDA (one GPU per process,
   ``cuda:LOCAL_RANK``). Anything else is one process, and every call below does nothing.
2. ``rank_batches``: each rank's share of an epoch's batches. Batch g of the epoch goes to rank
   g mod W, so W ranks train on W consecutive batches at once and every example is seen once per
   epoch; the batches depend only on (seed, epoch), as for one process, and a resumed epoch
   starts at the global batch the checkpoint names.
3. ``LossModule``: DDP wraps a module whose forward is ``task.loss(model, batch)``, so a task's
   loss sees the plain model and may reach into its submodules (the GAN calls ``generator`` and
   ``discriminator``) while DDP still sees one forward per backward.
4. ``no_sync`` while accumulating: gradients are averaged across ranks only on the micro-batch
   that ends an optimizer step.
5. ``sum_across``: training statistics travel as (sum, weight) pairs and are added across
   ranks, never averaged as floats; ``agree`` makes every rank take the same decision (skip a
   step, stop for time).
6. Only rank 0 (``Dist.main``) writes the run directory, logs, checkpoints and the model; it
   validates and tells the others the result (``share``).

A process that dies (killed, out of memory) leaves the others' next collective call to fail with
gloo's "Connection reset by peer" and a 60-line traceback; ``peer_lost_error`` turns that into
one line saying where the run stands and how to resume it (the CLI raises it).

One optimizer step therefore consumes ``W × grad_accum`` batches, and DDP's average of the
ranks' gradients equals what one process gets accumulating those batches: a W-process run
equals a one-process run with ``grad_accum`` multiplied by W (tested to 1e-6 in fp32,
tests/train/test_distributed.py). Every rank draws dropout and noise from the same seeded
generator (so a checkpoint's RNG state is every rank's); the ranks' batches differ.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from heedful.device import resolve_device
from heedful.errors import ConfigError, UserError, said_here, torchrun_ranks, torchrun_world


@dataclass
class Dist:
    """Where this process stands: its rank among ``world`` processes and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False  # this process initialised the group, so it tears it down

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    # ------------------------------------------------------------------------------- start and end
    @classmethod
    def start(cls, device_name: str) -> Dist:
        """Join torchrun's process group if this process is one of several (``WORLD_SIZE`` > 1),
        on ``device_name`` (a config's ``device``); otherwise one process on that device."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1 and not torch_dist.is_initialized():
            return cls(device=resolve_device(device_name))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        device = resolve_device(device_name)
        if device.type == "cuda":
            if device.index is not None:
                raise ConfigError(
                    f"config key 'device': {device_name!r} names one GPU, but torchrun gives each of its "
                    f"{world} processes its own (cuda:LOCAL_RANK); say device=cuda"
                )
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        owns = not torch_dist.is_initialized()
        if owns:  # torchrun put MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE in the environment
            torch_dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(torch_dist.get_rank(), torch_dist.get_world_size(), local_rank, device, owns)

    def end(self) -> None:
        if self.owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    # --------------------------------------------------------------------------- the model and steps
    def wrap(self, loss_module: LossModule) -> nn.Module:
        """DDP around the loss module (one process: the module itself). DDP copies rank 0's
        parameters and buffers to the others here, so every rank starts from the same model."""
        if not self.enabled:
            return loss_module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(loss_module, device_ids=ids)

    def no_sync(self, wrapped: nn.Module, sync: bool):
        """Accumulate gradients locally unless this micro-batch ends an optimizer step."""
        if not self.enabled or sync:
            return contextlib.nullcontext()
        return wrapped.no_sync()  # type: ignore[operator]

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag true on every rank if it is true on any (a bad gradient, time is up)."""
        if not self.enabled:
            return flags
        t = torch.tensor([float(f) for f in flags], device=self.device)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        return tuple(bool(v) for v in t.tolist())

    # ------------------------------------------------------------------------------------ statistics
    def sum_across(self, sums: dict[str, float], weight: float) -> tuple[dict[str, float], float]:
        """Every rank's weighted sums and weights added up (the same on every rank)."""
        if not self.enabled:
            return dict(sums), weight
        names: list[list[str] | None] = [None] * self.world
        torch_dist.all_gather_object(names, sorted(sums))
        keys = sorted({k for rank_keys in names for k in rank_keys or []})
        t = torch.tensor([weight, *(sums.get(k, 0.0) for k in keys)], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(t)
        total = t.tolist()
        return dict(zip(keys, total[1:], strict=True)), total[0]

    # ------------------------------------------------------------------------- stopping on an error
    def say_stopped(self, error: UserError) -> None:
        """Leave word in the job's key-value store that this process stops on ``error`` (and whether
        it printed it), so that the processes left waiting for it in a collective call, whose call
        then fails, stop without a second error that hides the first (``peer_lost_error``).
        torchrun's agent keeps the store, so the word outlives this process; where no word can be
        left, the others say that their peer is gone, as when it is killed."""
        if not self.enabled:
            return
        said = said_here(getattr(error, "rank_specific", False))
        word = {"rank": self.rank, "node": os.environ.get("GROUP_RANK", "0"), "said": said, "error": str(error)}
        with contextlib.suppress(Exception):
            _store().set(_stopped_key(), json.dumps(word))

    def who_stopped(self) -> dict[str, Any] | None:
        """The word another process left when it stopped on an error (``say_stopped``), if any."""
        if not self.enabled:
            return None
        try:
            store = _store()
            return json.loads(store.get(_stopped_key())) if store.check([_stopped_key()]) else None
        except Exception:  # no store left to ask (one that rank 0 kept went with it)
            return None

    def share(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object made by the trainer) on every rank."""
        if not self.enabled:
            return value
        box = [value]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]


def _store() -> Any:
    """The process group's key-value store (torchrun's agent's, or rank 0's), waited on 5 s at
    most: the store may be gone as well."""
    store = torch_dist.distributed_c10d._get_default_store()
    store.set_timeout(datetime.timedelta(seconds=5))
    return store


def _stopped_key() -> str:
    # A job torchrun starts again (--max-restarts) keeps its store: each attempt has its own word.
    return f"heedful/stopped/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def is_main_process() -> bool:
    """Whether this process is rank 0 of a torchrun launch, or the only one (what the command
    line asks before printing its summary)."""
    return int(os.environ.get("RANK", "0")) == 0


# What gloo says when the process at the other end of a connection is gone (PyTorch ≥ 2.1 raises
# DistBackendError, a RuntimeError, for some of them; older versions a bare RuntimeError).
_PEER_GONE = re.compile(r"connection (reset|closed|refused)|broken pipe|read error|write error", re.IGNORECASE)


def peer_gone(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective call that failed because another process of the job is gone."""
    text = str(exc)
    backend_error = type(exc).__name__ in ("DistBackendError", "DistNetworkError")
    return isinstance(exc, RuntimeError) and (backend_error or "gloo" in text) and bool(_PEER_GONE.search(text))


def peer_lost_error(exc: BaseException, run_dir: Any, dist: Dist | None = None) -> UserError | None:
    """The one-line UserError for ``exc`` when it is a collective call that failed because another
    process of this torchrun job stopped; None for any other exception (a bug keeps its traceback).

    When that process stopped on an error it said (``dist``'s word from ``Dist.say_stopped``),
    its error is the cause: a process on the same machine, which printed it, ends without a line of
    its own (``already_said``); one elsewhere repeats it, once per machine. Otherwise which rank
    stopped gloo does not say; of two processes it can only be the other one. The error is then
    this rank's own (``rank_specific``): each surviving process says it."""
    from heedful.train.checkpoint import list_checkpoints  # checkpoint imports nothing of this module
    from heedful.train.resume import resume_command

    if not peer_gone(exc):
        return None
    text = str(exc)
    if dist is not None and (word := dist.who_stopped()) is not None:
        cause = UserError(f"rank {word['rank']} stopped on an error, so this process did too: {word['error']}")
        here = word["node"] == os.environ.get("GROUP_RANK", "0")
        cause.already_said = bool(word["said"] and here)  # type: ignore[attr-defined]
        return cause
    rank, _ = torchrun_ranks()
    who = f"rank {1 - rank}?" if torchrun_world() == 2 else "torchrun's summary below names it"
    said = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    said = re.sub(r"^\[[^\]]*\]\s*", "", said).split(". ")[0]  # gloo's source location; its advice
    again = resume_command(run_dir)  # torchrun's launch of this job in front
    kept = list_checkpoints(run_dir / "checkpoints")
    where = (
        f"the last checkpoint is at step {kept[-1].name.removeprefix('step-')}; resume with: {again}"
        if kept
        else "no checkpoint was written yet: start the training again"
    )
    error = UserError(
        f"another process of this torchrun job stopped ({who}), so this one cannot go on ({said}); {where}"
    )
    error.rank_specific = True  # type: ignore[attr-defined]
    return error


class LossModule(nn.Module):
    """``task.loss(model, batch)`` as a module, so that DDP wraps the loss rather than the
    model: the task works on the plain model (its submodules, ``functional_call``…)."""

    def __init__(self, task: Any, model: nn.Module):
        super().__init__()
        self.task, self.model = task, model

    def forward(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
        return self.task.loss(self.model, batch)


def rank_batches(source: Any, epoch: int, start: int, dist: Dist) -> Iterator[tuple[Any, bool]]:
    """This rank's batches of ``epoch`` from global batch ``start`` on, one per round: batch
    ``start + k·W + rank`` in round k, for ⌈(S − start)/W⌉ rounds (S = the epoch's batches).

    When the last round has fewer batches than ranks, the ranks left without one get the epoch's
    last batch again, flagged ``False``: they train on it at weight zero, so every rank makes the
    same collective calls and DDP's average is the one the batches alone would give. Every rank
    builds every batch (a source is a generator over its epoch, as when resuming): the skipped
    ones cost their collation, not a forward pass.
    """
    steps, world, rank = source.steps_per_epoch(), dist.world, dist.rank
    last = None
    for g, batch in enumerate(source.batches(epoch)):
        if g >= steps:
            break
        if g >= start and (g - start) % world == rank:
            yield batch, True
        last = batch
    left = steps - start
    if left > 0 and left % world and rank >= left % world and last is not None:
        yield last, False


def rounds(steps: int, start: int, world: int) -> int:
    """How many rounds (one batch per rank each) remain of an epoch of ``steps`` batches."""
    return math.ceil(max(steps - start, 0) / world)
