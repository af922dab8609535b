"""What a resumed run may change: how long and how visibly it trains, not what it trains.

``heedful train RUN --resume --set model.position=rope`` loaded 4-head sinusoidal weights into a
RoPE model and trained on, since the tensors kept their shapes; config.yaml and model/ then
described an architecture the checkpoints never had. So a resume compares its config with the
run's own ``config.yaml``: another task or any ``model.*`` value is refused in one line; any
other changed setting (the data, the optimizer) is allowed but named once on stderr, since the
run's history then mixes two settings (validation on 50 examples, then on 1,000).

A resume with nothing left to do is refused too: a run that trained all its ``train.epochs``, or
whose ``train.max_minutes`` are spent (the budget counts the run's whole training time, every
session's). It resumed, trained one step, validated and added an "epoch" each time.
"""

from __future__ import annotations

import math
import os
import shlex
from pathlib import Path
from typing import Any

from heedful.config import RunConfig, TrainConfig, read_yaml
from heedful.errors import UserError, a_run, torchrun_world

# Settings a resume may change without a word: how far it trains, where and how it reports.
QUIET = {"run_dir", "device", "train.epochs", "train.max_minutes", "train.progress", "train.tensorboard",
         "train.wandb", "train.num_threads", "train.checkpoint_every", "train.keep_checkpoints",
         "train.early_stopping_patience"}  # fmt: skip


def resume_command(run_dir: Path) -> str:
    """``heedful train RUN --resume``, quoted for the shell (a command to paste: `runs/exp #2`);
    in a process torchrun started, the same job's launch in front (one process alone would resume
    a run whose batches were cut for several)."""
    return f"{torchrun_launch()}heedful train {shlex.quote(str(run_dir))} --resume"


def torchrun_launch() -> str:
    """``torchrun … -m `` for the job this process is one of (from torchrun's environment), or "".
    Of a job on several machines the rendezvous options are not in the environment: named, not given."""
    world = torchrun_world()
    if world == 1:
        return ""
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE") or world)  # unset: one machine
    if per_node == world:
        return f"torchrun --standalone --nproc-per-node {per_node} -m "
    return f"torchrun --nnodes {world // per_node} --nproc-per-node {per_node} (and this job's rendezvous options) -m "


def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists and scalars are leaves."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def changed_settings(run_dir: Path, cfg: RunConfig) -> list[str]:
    """The settings ``cfg`` changes from ``run_dir/config.yaml`` ("data.val_size 50 → 1000"),
    QUIET ones left out; a UserError for another task or a changed ``model.*``."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return []  # resume says itself what is missing
    saved = read_yaml(saved_path)
    if not isinstance(saved, dict):
        return []
    other = saved.get("task")
    resume = resume_command(run_dir)
    if other is not None and other != cfg.task:  # else: a page of mismatched weight names
        raise UserError(f"{run_dir}: holds {a_run(other)}, and this config trains {cfg.task!r}; "
                        f"resume it with its own config: {resume}")  # fmt: skip
    before, now = flat(saved), flat(cfg.model_dump(mode="json"))
    changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    for key in changed:
        if key.startswith("model."):
            raise UserError(
                f"--resume: {key} is {now.get(key)!r}, but {run_dir} was trained with {before.get(key)!r} "
                f"({saved_path}); a trained run's model is fixed: start a new run (train.init_from={run_dir} "
                "starts one from its weights)"
            )
    return [f"{k} {before.get(k)!r} → {now.get(k)!r}" for k in changed if k not in QUIET]


def nothing_left(run_dir: Path, tc: TrainConfig, state: dict[str, Any]) -> None:
    """A UserError when the checkpoint ``state`` leaves nothing to train under ``tc``."""
    resume = resume_command(run_dir)
    done = state["epoch"]
    if done >= tc.epochs:
        raise UserError(f"{run_dir}: has trained all its {done} epochs (train.epochs {tc.epochs}); "
                        f"to train longer: {resume} --set train.epochs={done + 10}")  # fmt: skip
    if tc.max_minutes and state["elapsed"] >= tc.max_minutes * 60:
        spent = state["elapsed"] / 60
        raise UserError(f"{run_dir}: its time budget is spent ({spent:.1f} min of train.max_minutes "
                        f"{tc.max_minutes:g}, every session counted); to train on: {resume} "
                        f"--set train.max_minutes={math.ceil(spent) + 5} (or null)")  # fmt: skip
