"""Data parallelism (heedful/train/distributed.py): which batches each rank trains on, and a
2-process gloo run against one process with the same global batch."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from heedful.errors import UserError
from heedful.runs import list_checkpoints, load_config
from heedful.train import fit
from heedful.train.distributed import Dist, peer_lost_error, rank_batches, rounds
from heedful.train.history import History
from tests.conftest import ROOT, latest_checkpoint_weights, tiny_dates_overrides


class Numbered:
    """A batch source whose batches are their own numbers."""

    def __init__(self, steps: int):
        self.steps = steps

    def steps_per_epoch(self) -> int:
        return self.steps

    def batches(self, epoch: int):
        yield from range(self.steps)


@pytest.mark.parametrize("steps", [1, 5, 6, 7])
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("start", [0, 2])
def test_ranks_share_every_batch_once_in_the_same_number_of_rounds(steps, world, start):
    shares = [list(rank_batches(Numbered(steps), 0, start, Dist(rank=r, world=world))) for r in range(world)]
    # Every rank makes the same number of rounds, so their collective calls match.
    assert {len(share) for share in shares} == {rounds(steps, start, world)}
    # Round k trains batch start + k·W + r on rank r; every batch after `start` exactly once.
    real = sorted(b for share in shares for b, is_real in share if is_real)
    assert real == list(range(start, steps))
    for r, share in enumerate(shares):
        for k, (b, is_real) in enumerate(share):
            if is_real:
                assert b == start + k * world + r
            else:  # only in the last round: the epoch's last batch again, at weight zero
                assert k == len(share) - 1 and b == steps - 1 and start + k * world + r >= steps


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def overrides(run_dir, grad_accum: int) -> list[str]:
    # 5 batches an epoch: with 2 ranks the last round leaves rank 1 without a batch. A mid-epoch
    # checkpoint every 2 steps carries partial sums.
    return tiny_dates_overrides(
        run_dir,
        **{
            "model.dropout": 0.0,
            "train.steps_per_epoch": 5,
            "train.grad_accum": grad_accum,
            "train.checkpoint_every": 2,
            "train.keep_checkpoints": 10,
        },
    )


def train_rank(rank: int, world: int, port: int, run_dir: str) -> None:
    """One process of a torchrun-style launch: the environment torchrun would give it."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    fit(load_config(ROOT / "configs" / "dates.yaml", overrides(run_dir, grad_accum=1)))


@pytest.mark.slow
def test_two_gloo_processes_train_the_same_weights_as_one(tmp_path):
    one = fit(load_config(ROOT / "configs" / "dates.yaml", overrides(tmp_path / "one", grad_accum=2)))
    mp.spawn(train_rank, args=(2, free_port(), str(tmp_path / "two")), nprocs=2, join=True)

    a, b = latest_checkpoint_weights(tmp_path / "one"), latest_checkpoint_weights(tmp_path / "two")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6, msg=name)
    two = History.load(tmp_path / "two" / "history.json")
    assert [row["step"] for row in two.epochs] == [row["step"] for row in one.epochs] == [3, 6]
    # Training statistics are every rank's (sum, weight), so the epoch's loss is the same figure.
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-5)
    assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-5)
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "checkpoints").iterdir()
    )

    # A checkpoint names its place in the epoch in global batches, and holds every rank's partial
    # sums: one process resumes the 2-process run from mid-epoch 2 (step 4, batch 2 of 5) and
    # ends where the others did.
    shutil.copytree(tmp_path / "two", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-6")
    cfg = load_config(ROOT / "configs" / "dates.yaml", overrides(tmp_path / "resumed", grad_accum=2))
    resumed = fit(cfg, resume=True)
    c = latest_checkpoint_weights(tmp_path / "resumed")
    for name in a:
        torch.testing.assert_close(c[name], a[name], rtol=0, atol=1e-6, msg=name)
    assert resumed["train_loss"] == pytest.approx(one["train_loss"], abs=1e-5)


def train_toy_rank(rank: int, world: int, port: int, run_dir: str) -> None:
    """A 2-process toy run in which only rank 1's loss turns NaN, at its 3rd batch, while the
    gradients stay finite (so DDP's average does not spread the NaN: the ranks must agree)."""
    import importlib

    import safetensors.torch

    from heedful.config import validate
    from heedful.tasks import registry
    from heedful.train import Trainer

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world)
    )
    torch.set_num_threads(1)
    toy = importlib.import_module("tests.toy_task")
    registry.MODULES["toy"], registry.TASKS["toy"] = "tests.toy_task", toy.ToyTask
    original, calls = toy.ToyTask.loss, {"n": 0}

    def loss(self, model, batch):
        calls["n"] += 1
        value, stats = original(self, model, batch)
        if rank == 1 and calls["n"] == 3:  # NaN, with finite gradients: only rank 1 can tell
            value = value + (float("nan") - value.detach())
        return value, stats

    toy.ToyTask.loss = loss
    train = {"epochs": 2, "lr": 0.1, "batch_size": 32, "schedule": "constant", "warmup_steps": 0, "progress": False,
             "tensorboard": False, "max_minutes": None, "num_threads": 1}  # fmt: skip
    cfg = validate(toy.ToyConfig, {"task": "toy", "run_dir": run_dir, "device": "cpu", "train": train})
    trainer = Trainer(toy.ToyTask(cfg), cfg)
    history = trainer.fit()
    weights = {k: v.contiguous() for k, v in trainer.model.state_dict().items()}
    steps = str(history.last()["step"])
    safetensors.torch.save_file(weights, f"{run_dir}-rank{rank}.safetensors", metadata={"steps": steps})


@pytest.mark.slow
def test_a_nan_on_one_rank_skips_the_step_on_every_rank(tmp_path):
    import safetensors

    run_dir = str(tmp_path / "toy")
    mp.spawn(train_toy_rank, args=(2, free_port(), run_dir), nprocs=2, join=True)
    states = []
    for rank in range(2):
        with safetensors.safe_open(f"{run_dir}-rank{rank}.safetensors", "pt") as f:
            states.append(({k: f.get_tensor(k) for k in f.keys()}, f.metadata()["steps"]))  # noqa: SIM118
    # 512 numbers in batches of 32 on 2 ranks: 8 steps an epoch, one skipped by both ranks.
    assert states[0][1] == states[1][1] == "15"
    for name, value in states[0][0].items():
        assert torch.isfinite(value).all() and torch.equal(value, states[1][0][name]), name


GLOO_PEER_GONE = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:24483: "
    "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application. "
    "Check the logs of the remote worker before reporting an error. GLHF! 🏖️"
)  # what torch 2.x's gloo raised on rank 0 when rank 1 was SIGKILLed


def test_a_collective_failed_by_a_lost_process_is_one_line_naming_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    run = tmp_path / "exp #2"
    error = peer_lost_error(RuntimeError(GLOO_PEER_GONE), run)
    assert str(error) == (
        "another process of this torchrun job stopped (rank 1?), so this one cannot go on (Read error "
        "[127.0.0.1]:24483: Connection reset by peer); no checkpoint was written yet: start the training again"
    )
    assert error.rank_specific
    (run / "checkpoints" / "step-12").mkdir(parents=True)
    (run / "checkpoints" / "step-12" / "state.json").write_text("{}")
    assert str(peer_lost_error(RuntimeError(GLOO_PEER_GONE), run)).endswith(
        f"; the last checkpoint is at step 12; resume with: torchrun --standalone --nproc-per-node 2 -m heedful train "
        f"'{run}' --resume"
    )
    monkeypatch.setenv("RANK", "1")
    assert "stopped (rank 0?)" in str(peer_lost_error(RuntimeError(GLOO_PEER_GONE), run))
    # Any other error is a bug, and keeps its traceback.
    assert peer_lost_error(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), run) is None
    assert peer_lost_error(ValueError(GLOO_PEER_GONE), run) is None


@pytest.mark.slow
@pytest.mark.parametrize("term_first", [False, True], ids=["in-a-collective", "sigterm-first"])
def test_a_process_killed_mid_training_ends_the_job_in_one_line(tmp_path, term_first):
    """sigterm-first: torchrun's SIGTERM reaches the survivor before its collective call fails (it
    was still busy with its step); it used to announce a checkpoint it then could not write."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), str(ROOT / "tests" / "train" / "kill_rank.py"), "train",
               str(ROOT / "configs" / "dates.yaml")]  # fmt: skip
    for item in tiny_dates_overrides(run, **{"train.checkpoint_every": 2}):
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env["TERM_FIRST"] = "1" if term_first else "0"
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode != 0
    # 4 batches an epoch are 2 steps with 2 ranks; rank 1 died at its 5th agree (one a step, one at
    # each epoch's end): at step 4, before its checkpoint, so step 2's is the last.
    ours = [line for line in done.stderr.splitlines() if line.startswith(("heedful:", "[rank0]", "[rank1]"))]
    # If not, show what torchrun said.
    assert len(ours) == 1 and "cannot go on " in ours[0], done.stderr
    assert ours == [
        "heedful: error: another process of this torchrun job stopped (rank 1?), so this one cannot go on "
        + ours[0].split("cannot go on ", 1)[1].split(");", 1)[0]
        + "); the last checkpoint is at step 2; resume with: torchrun --standalone --nproc-per-node 2 -m heedful "
        f"train {run} --resume"
    ], done.stderr


@pytest.mark.slow
def test_a_sigterm_to_torchrun_stops_every_process_at_one_step_with_its_checkpoint(tmp_path):
    """torchrun passes a SIGTERM on to its processes; they agree on the step to stop at, rank 0 says
    so once (not each process as its signal lands) and then how to resume."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), "-m", "heedful", "train", str(ROOT / "configs" / "dates.yaml")]  # fmt: skip
    for item in tiny_dates_overrides(run, **{"train.epochs": 50, "train.steps_per_epoch": 50}):
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    job = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run / "history.json").is_file() and time.monotonic() < deadline:  # epoch 1 ended
        time.sleep(0.1)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=120)
    assert job.returncode != 0, err
    kept = list_checkpoints(run / "checkpoints")[-1]
    assert int(kept.name[5:]) > 25, err  # a step of epoch 2 (25 steps an epoch on 2 ranks), not epoch 1's end
    ours = [line for line in err.splitlines() if line.startswith("heedful:")]
    assert ours == [
        f"heedful: stopping every process at step {kept.name[5:]} to save a checkpoint",
        f"heedful: interrupted; `torchrun --standalone --nproc-per-node 2 -m heedful train {run} --resume` "
        f"continues from {kept.name}",
    ], err


def test_a_lost_peer_holds_off_torchruns_sigterm_until_the_error_is_said(tmp_path, monkeypatch):
    """torchrun SIGTERMs the survivors as soon as it sees a process gone; one that had just met the
    loss in a collective call was sometimes ended by it before saying anything (about 1 run in 35
    of the killed-process test on a loaded host). From the failed call on, SIGTERM stays ignored:
    the line is said after fit has raised it, and a SIGTERM between the two cut it short (about 1
    run in 15 with another suite running)."""
    import heedful.train.trainer as trainer

    def lost(*_args, **_kwargs):
        raise RuntimeError(GLOO_PEER_GONE)

    seen = []

    def recording(exc, run_dir, dist=None):
        seen.append(signal.getsignal(signal.SIGTERM))
        return peer_lost_error(exc, run_dir, dist)

    monkeypatch.setattr(trainer.Trainer, "_loop", lost)
    monkeypatch.setattr(trainer, "peer_lost_error", recording)
    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(UserError, match="another process of this torchrun job stopped"):
            fit(load_config(ROOT / "configs" / "dates.yaml", tiny_dates_overrides(tmp_path / "run")))
        assert seen == [signal.SIG_IGN] and signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, before)
    # Any other error is a bug: the caller's handler is back.
    monkeypatch.setattr(trainer, "peer_lost_error", lambda *_args, **_kwargs: None)
    with pytest.raises(RuntimeError, match="Connection reset by peer"):
        fit(load_config(ROOT / "configs" / "dates.yaml", tiny_dates_overrides(tmp_path / "run2")))
    assert signal.getsignal(signal.SIGTERM) == before


class Told:
    """A Dist whose job's store holds the word another process left as it stopped on an error."""

    def __init__(self, word):
        self.word = word

    def who_stopped(self):
        return self.word


def test_a_peer_that_stopped_on_an_error_it_said_is_not_said_again(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("GROUP_RANK", "0")
    said = "runs/x: --resume given, but there is no checkpoint to resume from"
    word = {"rank": 0, "node": "0", "said": True, "error": said}
    error = peer_lost_error(RuntimeError(GLOO_PEER_GONE), tmp_path, Told(word))
    assert str(error) == f"rank 0 stopped on an error, so this process did too: {said}"
    assert error.already_said and not getattr(error, "rank_specific", False)
    # On another machine, or unsaid (a process other than its machine's first, on an error every
    # process meets), it is said once per machine: rank 2 here is its machine's first.
    monkeypatch.setenv("GROUP_RANK", "1")
    assert not peer_lost_error(RuntimeError(GLOO_PEER_GONE), tmp_path, Told(word)).already_said
    monkeypatch.setenv("GROUP_RANK", "0")
    assert not peer_lost_error(RuntimeError(GLOO_PEER_GONE), tmp_path, Told({**word, "said": False})).already_said
    # No word (the peer was killed): its loss is this process's own error, as before.
    assert str(peer_lost_error(RuntimeError(GLOO_PEER_GONE), tmp_path, Told(None))).startswith(
        "another process of this torchrun job stopped ("
    )


@pytest.mark.slow
def test_a_process_that_stops_on_an_error_is_the_one_that_says_it(tmp_path):
    """Rank 0 refuses the resume while rank 1 waits for it at a barrier, which then fails: rank 1
    said that its peer was gone, a second error that hid the first. Rank 1 ignores torchrun's
    SIGTERM (tests/train/deaf_rank.py), which would often stop it before its barrier failed."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
               str(free_port()), str(ROOT / "tests" / "train" / "deaf_rank.py"), "train",
               str(ROOT / "configs" / "dates.yaml"), "--resume"]  # fmt: skip
    for item in tiny_dates_overrides(run):
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith(("heedful:", "[rank0]", "[rank1]"))]
    assert ours == [f"heedful: error: {run}: --resume given, but there is no checkpoint to resume from"], done.stderr
    assert "exitcode  : 2" in done.stderr.split("[1]:", 1)[1], done.stderr  # rank 1 stopped on its failed barrier
