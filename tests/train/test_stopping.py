"""Ctrl-C or SIGTERM stops a training where a step ends, with a checkpoint there (train/stopping.py):
nothing trained is lost, and the resumed run ends bit-identical to one never stopped."""

import os
import signal
import subprocess
import sys
import time

import pytest
import safetensors.torch
import torch

from heedful.runs import load_config
from heedful.tasks import get_task
from heedful.train import fit
from heedful.train.checkpoint import list_checkpoints
from heedful.train.stopping import TrainingStopped, stop_on_signals
from tests.conftest import ROOT, tiny_dates_overrides


def test_the_first_signal_asks_the_second_interrupts_and_the_handlers_come_back():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with stop_on_signals(announce=False) as request:
        assert not request
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert request.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # asked once already: now at once
            time.sleep(0.01)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.slow  # two short trainings each
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_stopped_run_keeps_every_step_and_resumes_bit_identically(tmp_path, monkeypatch, signum):
    """Without train.checkpoint_every, a stop in epoch 2 lost everything since epoch 1's end."""

    def config(run_dir, *extra):
        overrides = tiny_dates_overrides(run_dir, **{"train.epochs": 2, "train.steps_per_epoch": 6})
        return load_config(ROOT / "configs" / "dates.yaml", [*overrides, *extra])

    reference = fit(config(tmp_path / "straight"))
    task_class, calls = get_task("translate"), []
    plain_loss = task_class.loss

    def loss(self, model, batch):  # the signal arrives during step 9 (epoch 2's third)
        calls.append(1)
        if len(calls) == 9:
            os.kill(os.getpid(), signum)
        return plain_loss(self, model, batch)

    monkeypatch.setattr(task_class, "loss", loss)
    run_dir = tmp_path / "stopped"
    with pytest.raises(TrainingStopped) as stopped:
        fit(config(run_dir))
    assert stopped.value.signum == signum
    assert [p.name for p in list_checkpoints(run_dir / "checkpoints")] == ["step-6", "step-9"]  # the stop's own
    assert (run_dir / "plots" / "history.png").is_file()  # the curves so far
    monkeypatch.setattr(task_class, "loss", plain_loss)
    resumed = fit(config(run_dir), resume=True)
    assert [r["train_loss"] for r in resumed.epochs] == [r["train_loss"] for r in reference.epochs]
    want = safetensors.torch.load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    got = safetensors.torch.load_file(str(run_dir / "model" / "model.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.slow
def test_sigterm_from_outside_saves_says_how_to_resume_and_exits_143(tmp_path):
    run_dir = tmp_path / "run dir"  # a space: the printed command must still be one to paste
    overrides = tiny_dates_overrides(run_dir, **{"train.epochs": 50, "train.steps_per_epoch": 50})
    args = [a for o in overrides for a in ("--set", o)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "heedful.cli", "train", "configs/dates.yaml", *args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run_dir / "history.json").is_file() and time.monotonic() < deadline:  # the loop runs: epoch 1 ended
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 143, err
    kept = list_checkpoints(run_dir / "checkpoints")[-1]
    assert int(kept.name[5:]) > 50  # a step of epoch 2, not epoch 1's end
    assert (
        err.splitlines()[-1] == f"heedful: interrupted; `heedful train '{run_dir}' --resume` continues from {kept.name}"
    )
