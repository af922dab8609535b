"""Checkpoints (train/checkpoint.py): a damaged one met when resuming is set aside, not deleted; a
changed byte that still parses is caught by the sha256 that state.json records."""

import hashlib
import json
import shutil

import pytest
import safetensors.torch
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
        f"heedful: warning: {damaged}: damaged checkpoint file (its sha256 is not the one state.json recorded when "
        f"it was written: it changed on disk since); moved aside to {aside.name}, trying the checkpoint before\n"
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


def flip_a_tensor_byte(file):
    """Invert one byte halfway through the tensor data of a safetensors file (the header — an
    8-byte length, then JSON — is left whole, so the file still parses)."""
    data = bytearray(file.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    middle = (start + len(data)) // 2
    data[middle] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors"])
def test_a_byte_changed_inside_the_tensor_data_is_caught_by_the_checksum(tmp_path, capsys, name):
    checkpoints = tmp_path / "checkpoints"
    saved(checkpoints, [1, 2], width=300)
    damaged = checkpoints / "step-2" / name
    before = {k: v.clone() for k, v in safetensors.torch.load_file(str(damaged)).items()}  # not a view of the file
    flip_a_tensor_byte(damaged)
    after = safetensors.torch.load_file(str(damaged))  # what safetensors alone would have loaded
    assert after.keys() == before.keys() and any(not torch.equal(after[k], before[k]) for k in before)

    model, optimizer = saved(tmp_path / "unused", [], width=300)
    path, state = load_latest_checkpoint(checkpoints, model, optimizer, {})
    assert path.name == "step-1" and state == {"step": 1}
    (aside,) = checkpoints.glob(".damaged-step-2-*")
    assert capsys.readouterr().err == (
        f"heedful: warning: {damaged}: damaged checkpoint file (its sha256 is not the one state.json recorded "
        f"when it was written: it changed on disk since); moved aside to {aside.name}, trying the checkpoint before\n"
    )

    # With no checkpoint before it to fall back on: one line naming the file.
    flip_a_tensor_byte(checkpoints / "step-1" / name)
    with pytest.raises(CheckpointError) as caught:
        load_latest_checkpoint(checkpoints, model, optimizer, {})
    assert str(caught.value).startswith(f"{checkpoints / 'step-1' / name}: damaged checkpoint file (its sha256")


def test_untouched_checkpoints_and_those_saved_before_the_checksums_load(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    model, _ = saved(checkpoints, [1, 2], width=300)
    recorded = json.loads((checkpoints / "step-2" / "state.json").read_text())["sha256"]
    assert recorded == {
        name: hashlib.sha256((checkpoints / "step-2" / name).read_bytes()).hexdigest()
        for name in ("model.safetensors", "optimizer.safetensors")
    }
    other, optimizer = saved(tmp_path / "unused", [], width=300)
    path, state = load_latest_checkpoint(checkpoints, other, optimizer, {})
    assert path.name == "step-2" and state == {"step": 2}  # the sums stay in state.json, not in the trainer's state
    assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), model.state_dict().values(), strict=True))

    # A checkpoint written before heedful kept sums has nothing to check against, and loads as it did.
    state_file = checkpoints / "step-2" / "state.json"
    payload = json.loads(state_file.read_text())
    del payload["sha256"]
    state_file.write_text(json.dumps(payload))
    flip_a_tensor_byte(checkpoints / "step-2" / "model.safetensors")
    assert load_latest_checkpoint(checkpoints, other, optimizer, {})[0].name == "step-2"
