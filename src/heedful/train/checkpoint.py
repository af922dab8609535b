"""Checkpoints that survive a crash and never need unpickling.

A checkpoint is a folder ``checkpoints/step-N/``:

    model.safetensors      model weights
    optimizer.safetensors  optimizer tensors (Adam moments, step counts), RNG states and any
                           extra trainer tensors (the weight average, ``ema.*``)
    state.json             optimizer hyper-parameters, trainer position, RNG states, history, and the
                           sha256 of the two safetensors files

It is written under a temporary name (``.tmp-step-N-pid``) and renamed into place only when
complete, so a run cut off mid-write leaves the previous checkpoint intact. ``state.json`` is
written last and marks a complete checkpoint. Re-saving a step moves the old folder aside
(``.old-step-N-pid``) first; ``rundir`` cleans up (or puts back) what a kill leaves. A checkpoint
that cannot be read when resuming is moved aside as ``.damaged-step-N-pid``, and removed once a
checkpoint of that step or a later one has been saved (``--overwrite`` removes ``checkpoints/`` whole).

The checksums catch what the safetensors format cannot: bytes changed inside the tensor data (a
bad disk sector, a faulty copy) still parse, and the resume then trained on from damaged weights
to NaN. A file whose sha256 differs from the recorded one is unreadable like a truncated one.
Checkpoints written before the checksums load unchecked.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from heedful.errors import CheckpointError, warn
from heedful.nn.weights import load_weights, save_weights, sha256

_STEP_DIR = re.compile(r"^step-(\d+)$")
_DAMAGED_DIR = re.compile(r"^\.damaged-step-(\d+)-[\d.]+$")
_HASHED = ("model.safetensors", "optimizer.safetensors")  # the files state.json holds the sha256 of


class UnreadableCheckpoint(CheckpointError):
    """A checkpoint whose files are missing or damaged (as opposed to one of another model)."""


def _optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, values in state["state"].items():
        for name, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{pid}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _optimizer_from_flat(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for key, value in meta["scalars"].items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    py_version, py_internal, py_gauss = random.getstate()
    meta = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    return tensors, meta


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))


def verify_checksums(path: Path, names: tuple[str, ...] = _HASHED) -> None:
    """An UnreadableCheckpoint naming the first of ``names`` in checkpoint ``path`` whose sha256 is
    not the one its ``state.json`` recorded. A checkpoint that recorded none (written before
    heedful kept them) passes unchecked."""
    _check_sums(path, _read_state(path), names)


def _read_state(path: Path) -> Any:
    """Checkpoint ``path``'s ``state.json``, or an UnreadableCheckpoint saying what is wrong with it."""
    state_file = path / "state.json"
    try:
        return json.loads(state_file.read_text())
    except FileNotFoundError:
        raise UnreadableCheckpoint(f"{path}: incomplete checkpoint (state.json missing)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnreadableCheckpoint(f"{state_file}: unreadable checkpoint file ({exc})") from None


def _check_sums(path: Path, payload: Any, names: tuple[str, ...]) -> None:
    recorded = payload.get("sha256") if isinstance(payload, dict) else None
    for name in names:
        if not isinstance(recorded, dict) or name not in recorded:
            continue  # a checkpoint from before the checksums
        file = path / name
        if not file.is_file():
            raise UnreadableCheckpoint(f"{path}: incomplete checkpoint ({name} missing)")
        if sha256(file) != recorded[name]:
            raise UnreadableCheckpoint(
                f"{file}: damaged checkpoint file (its sha256 is not the one state.json recorded when it was "
                "written: it changed on disk since)"
            )


def _fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to the disk: a rename is only as durable as
    what it renames, and after a power cut an un-synced file can be there yet empty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    directory: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int,
    extra_tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``directory/step-N`` atomically and keep only the newest ``keep`` checkpoints.

    Every file is written and fsynced in a temporary folder, which is fsynced, renamed into place,
    and the parent fsynced. A write that fails (a full disk, a permission error) removes the
    temporary folder and raises the ``OSError``: the checkpoints already there are untouched, and
    older ones are pruned only once the new one is in place."""
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step}"
    tmp = directory / f".tmp-step-{step}-{os.getpid()}"
    old = directory / f".old-step-{step}-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        save_weights(model, tmp / "model.safetensors")
        opt_tensors, opt_meta = _optimizer_to_flat(optimizer)
        rng_tensors, rng_meta = rng_state()
        tensors = {**opt_tensors, **rng_tensors, **{k: v.detach().cpu() for k, v in (extra_tensors or {}).items()}}
        safetensors.torch.save_file(tensors, str(tmp / "optimizer.safetensors"))
        # The sums are of the bytes as read back (from the page cache, just written): what a resume will read.
        sums = {name: sha256(tmp / name) for name in _HASHED}
        payload = {"optimizer": opt_meta, "rng": rng_meta, **state, "sha256": sums}
        with open(tmp / "state.json", "w") as f:
            json.dump(payload, f)
            f.flush()
            os.fsync(f.fileno())
        for name in ("model.safetensors", "optimizer.safetensors"):
            _fsync(tmp / name)
        _fsync(tmp)
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():  # re-saving the same step (e.g. epoch end right after a periodic save)
            final.rename(old)
        try:
            tmp.rename(final)
        except OSError:
            if old.exists() and not final.exists():
                old.rename(final)  # the step's earlier checkpoint goes back
            raise
        _fsync(directory)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # best effort: rundir also clears leftovers
        raise
    shutil.rmtree(old, ignore_errors=True)
    for stale in list_checkpoints(directory)[:-keep]:
        shutil.rmtree(stale, ignore_errors=True)
    # A damaged checkpoint this one supersedes: kept until now in case the resume that set it aside
    # failed too, it is no longer needed once training has got this far again.
    for child in directory.iterdir():
        match = _DAMAGED_DIR.match(child.name)
        if match and int(match.group(1)) <= step:
            shutil.rmtree(child, ignore_errors=True)
    return final


def list_checkpoints(directory: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    found = []
    for child in directory.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / "state.json").is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def checkpoint_holding(directory: Path, digest: str) -> Path | None:
    """The newest complete checkpoint in ``directory`` whose ``model.safetensors`` has the sha256
    ``digest`` by its state.json's record: the best model is saved with the same bytes as its
    epoch's checkpoint (unless a weight average is what was saved), so a damaged ``model/`` can be
    put back from it while that checkpoint is kept."""
    for path in reversed(list_checkpoints(directory)):
        try:
            recorded = json.loads((path / "state.json").read_text()).get("sha256") or {}
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(recorded, dict) and recorded.get("model.safetensors") == digest:
            return path
    return None


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, extra_tensors: dict[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """Restore model, optimizer and RNG states from ``path``; return the trainer state. Tensors
    saved through ``extra_tensors`` (e.g. a weight average) are put into that dict."""
    weights_file, optimizer_file = path / "model.safetensors", path / "optimizer.safetensors"
    payload = _read_state(path)
    for file in (weights_file, optimizer_file):
        if not file.is_file():
            raise UnreadableCheckpoint(f"{path}: incomplete checkpoint ({file.name} missing)")
    _check_sums(path, payload, _HASHED)  # before a byte is loaded: a damaged file must not half-fill the model
    try:
        missing, unexpected = load_weights(model, weights_file, strict=False)
    except safetensors.SafetensorError as exc:
        raise UnreadableCheckpoint(f"{weights_file}: unreadable checkpoint file ({exc})") from None
    except RuntimeError as exc:  # tensor shapes that do not match the model
        raise CheckpointError(
            f"{weights_file}: checkpoint does not fit this model's config ({str(exc).splitlines()[-1].strip()})"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{weights_file}: checkpoint does not fit this model's config (missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]})"
        )
    try:
        tensors = safetensors.torch.load_file(str(optimizer_file))
    except safetensors.SafetensorError as exc:
        raise UnreadableCheckpoint(f"{optimizer_file}: unreadable checkpoint file ({exc})") from None
    optimizer.load_state_dict(
        _optimizer_from_flat({k: v for k, v in tensors.items() if k.startswith("state.")}, payload["optimizer"])
    )
    set_rng_state({k: v for k, v in tensors.items() if k.startswith("rng.")}, payload["rng"])
    if extra_tensors is not None:
        extra_tensors.update({k: v for k, v in tensors.items() if not k.startswith(("state.", "rng."))})
    return {k: v for k, v in payload.items() if k not in ("optimizer", "rng", "sha256")}


def load_latest_checkpoint(
    directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, extra_tensors: dict[str, torch.Tensor]
) -> tuple[Path, dict[str, Any]]:
    """Restore the newest checkpoint that reads. A damaged newer one is reported on stderr and moved
    aside as ``.damaged-step-N-pid`` — not left in place, where it would stay the newest and outlive
    good ones when old checkpoints are pruned, and not deleted, since the resume from the one before
    may fail as well (``save_checkpoint`` removes it once a later checkpoint is saved)."""
    checkpoints = list_checkpoints(directory)
    for i, path in enumerate(reversed(checkpoints)):
        try:
            return path, load_checkpoint(path, model, optimizer, extra_tensors)
        except UnreadableCheckpoint as exc:
            if i == len(checkpoints) - 1:
                raise
            aside = path.with_name(f".damaged-{path.name}-{os.getpid()}")
            for n in range(1, 1000):  # this process set the step aside before (a resume that failed)
                if not aside.exists():
                    break
                aside = path.with_name(f".damaged-{path.name}-{os.getpid()}.{n}")
            path.rename(aside)
            warn(f"{exc}; moved aside to {aside.name}, trying the checkpoint before")
            extra_tensors.clear()
    raise CheckpointError(f"{directory}: no checkpoint to resume from")
