"""A checkpoint that cannot be written — a full disk, a permission error — stops training with one
line, and the checkpoint before it stays intact and resumable (train/checkpoint.py)."""

import errno
import os
import sys

import pytest

from heedful import cli
from heedful.train import checkpoint as checkpoint_module
from heedful.train.checkpoint import list_checkpoints
from tests.conftest import assert_same_latest_checkpoint, latest_checkpoint_weights, tiny_dates_overrides


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def train_args(run_dir, *flags):
    return ["heedful", "train", "configs/dates.yaml", *flags,
            *(a for o in tiny_dates_overrides(run_dir) for a in ("--set", o))]  # fmt: skip


def run_main(monkeypatch, capsys, argv) -> tuple[int, str]:
    monkeypatch.setattr(sys, "argv", argv)
    capsys.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err


FAILURES = {
    # where the second checkpoint's save fails, and how
    "disk-full-weights": ("save_weights", errno.ENOSPC),
    "disk-full-optimizer": ("optimizer", errno.ENOSPC),
    "permission-state": ("state", errno.EACCES),
}


@pytest.mark.slow  # three tiny trainings and a resume each: ~20 s
@pytest.mark.parametrize("failure", FAILURES, ids=list(FAILURES))
def test_a_failed_save_is_one_line_and_the_previous_checkpoint_survives(failure, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(cli.__file__.rsplit("/src/", 1)[0])  # configs/ relative to the repository root
    where, code = FAILURES[failure]
    run_dir = tmp_path / "run"
    saves, kept = {"n": 0}, {}
    real_save_weights, real_save_file, real_open = (
        checkpoint_module.save_weights, checkpoint_module.safetensors.torch.save_file, open
    )  # fmt: skip

    def fail(path):
        raise OSError(code, os.strerror(code), str(path))

    def save_weights(model, path):
        saves["n"] += 1
        if saves["n"] == 2:  # the first checkpoint (step 4) is complete: remember its bytes
            kept.update(snapshot(run_dir / "checkpoints"))
            if where == "save_weights":
                real_save_weights(model, path)
                with open(path, "r+b") as f:
                    f.truncate(100)  # half written when the disk filled
                fail(path)
        real_save_weights(model, path)

    def save_file(tensors, path):
        if saves["n"] == 2 and where == "optimizer":
            fail(path)
        real_save_file(tensors, path)

    def guarded_open(path, *args, **kwargs):
        if saves["n"] == 2 and where == "state" and str(path).endswith("state.json"):
            fail(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module, "save_weights", save_weights)
    monkeypatch.setattr(checkpoint_module.safetensors.torch, "save_file", save_file)
    monkeypatch.setattr(checkpoint_module, "open", guarded_open, raising=False)
    exit_code, err = run_main(monkeypatch, capsys, train_args(run_dir))
    assert exit_code == 2, err
    # Epoch lines are progress on stderr too; the failure is one line, the last.
    (line,) = [said for said in err.strip().splitlines() if not said.startswith("epoch ")]
    assert err.strip().splitlines()[-1] == line
    assert line.startswith(f"heedful: error: {run_dir}: cannot write the run directory: {os.strerror(code)}"), line
    assert ".tmp-step-8" in line  # names the file it could not write
    assert kept and snapshot(run_dir / "checkpoints") == kept  # step-4 intact, nothing half-written left
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step-4"]

    monkeypatch.undo()  # the disk has room again: resuming finishes the run as if nothing happened
    monkeypatch.chdir(cli.__file__.rsplit("/src/", 1)[0])
    assert run_main(monkeypatch, capsys, train_args(run_dir, "--resume"))[0] == 0
    assert run_main(monkeypatch, capsys, train_args(tmp_path / "whole"))[0] == 0
    assert_same_latest_checkpoint(run_dir, tmp_path / "whole")
    assert latest_checkpoint_weights(run_dir)  # step-8, complete and readable
