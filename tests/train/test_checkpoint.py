"""Checkpoints (train/checkpoint.py): a damaged one met when resuming is set aside, not deleted."""

import shutil

import pytest
import torch
from torch import nn

from heedful.errors import CheckpointError
from heedful.train.checkpoint import list_checkpoints, load_latest_checkpoint, save_checkpoint


def saved(directory, steps, width=3):
    torch.manual_seed(0)
    model = nn.Linear(width, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    for step in steps:
        save_checkpoint(directory, step, model, optimizer, {"step": step}, keep=5)
    return model, optimizer


def test_a_damaged_newest_checkpoint_is_set_aside_and_kept_when_the_one_before_fails_too(tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    saved(checkpoints, [1, 2])
    damaged = checkpoints / "step-2" / "model.safetensors"
    cut = damaged.read_bytes()[:40]
    damaged.write_bytes(cut)
    other = nn.Linear(5, 2)  # a config that no longer fits the run: step-1 fails too
    with pytest.raises(CheckpointError, match=r"step-1/model.safetensors: checkpoint does not fit this model's config"):
        load_latest_checkpoint(checkpoints, other, torch.optim.AdamW(other.parameters()), {})
    (aside,) = checkpoints.glob(".damaged-step-2-*")
    assert (aside / "model.safetensors").read_bytes() == cut  # still there, to be looked at or put back
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step-1"]
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"heedful: warning: {damaged}: unreadable checkpoint file (Error while deserializing header: "
        f"{err.split('(Error while deserializing header: ', 1)[1].split(')', 1)[0]}); moved aside to {aside.name}, "
        "trying the checkpoint before\n"
    )

    # Resumed from step-1 with the right model, the set-aside step goes once a step at least as late is saved.
    model, optimizer = saved(tmp_path / "unused", [])
    path, state = load_latest_checkpoint(checkpoints, model, optimizer, {})
    assert path.name == "step-1" and state["step"] == 1 and aside.is_dir()
    save_checkpoint(checkpoints, 2, model, optimizer, {"step": 2}, keep=5)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-1", "step-2"]


def test_a_step_set_aside_twice_keeps_both(tmp_path, capsys):
    checkpoints = tmp_path / "checkpoints"
    saved(checkpoints, [1, 2])
    (checkpoints / "step-2" / "optimizer.safetensors").unlink()  # a missing file
    model, optimizer = saved(tmp_path / "unused", [])
    assert load_latest_checkpoint(checkpoints, model, optimizer, {})[0].name == "step-1"
    (aside,) = checkpoints.glob(".damaged-step-2-*")
    shutil.copytree(aside, checkpoints / "step-2")  # put back by hand, to try again
    assert load_latest_checkpoint(checkpoints, model, optimizer, {})[0].name == "step-1"
    assert sorted(p.name for p in checkpoints.glob(".damaged-step-2-*")) == [aside.name, f"{aside.name}.1"]
    assert "step-2: incomplete checkpoint (optimizer.safetensors missing); moved aside" in capsys.readouterr().err
