"""``warn`` and ``note``: one line on stderr, once per machine of a torchrun job (as the CLI says an error)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from heedful.errors import note, warn
from heedful.train.trainer import Trainer


def torchrun(monkeypatch, world: str, rank: str, local_rank: str) -> None:
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", local_rank)


def test_a_warning_alone_is_one_line(monkeypatch, capsys):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    warn("data.sample: 3 rows kept")
    warn("mine alone", rank_specific=True)
    assert capsys.readouterr() == ("", "heedful: warning: data.sample: 3 rows kept\nheedful: warning: mine alone\n")


@pytest.mark.parametrize(
    ("rank", "local_rank", "said", "own"),
    [("0", "0", "", ""), ("1", "1", None, "rank 1: "), ("2", "0", "rank 2: ", "rank 2: ")],
)
def test_under_torchrun_the_first_process_of_each_machine_warns(monkeypatch, capsys, rank, local_rank, said, own):
    """Every process met it alike: local rank 0 says it (rank 2 is the first of a second machine of
    two). What befell one process only it says itself, naming its rank."""
    torchrun(monkeypatch, "4", rank, local_rank)
    warn("step 3 skipped")
    assert capsys.readouterr().err == ("" if said is None else f"heedful: warning: {said}step 3 skipped\n")
    warn("its own disk is slow", rank_specific=True)
    assert capsys.readouterr().err == f"heedful: warning: {own}its own disk is slow\n"


def test_a_step_every_rank_skipped_is_warned_once_per_machine(monkeypatch, capsys, tmp_path):
    """The ranks agree on a NaN step (``Dist.agree``), so every process skipped it: the first of
    each machine says so (global rank 0 alone left a second machine silent)."""
    said = []
    for rank, local_rank in (("1", "1"), ("0", "0"), ("2", "0")):
        torchrun(monkeypatch, "4", rank, local_rank)
        trainer = SimpleNamespace(
            tc=SimpleNamespace(max_nonfinite_steps=5), run_dir=tmp_path, dist=SimpleNamespace(main=rank == "0")
        )
        Trainer._skip_step(trainer, {"step": 2, "nonfinite_in_a_row": 0, "skipped_steps": 0})
        said.append(capsys.readouterr().err)
    line = "step 3 skipped: the loss or a gradient is NaN or infinite (1 in a row; training stops at 5)\n"
    assert said == ["", f"heedful: warning: {line}", f"heedful: warning: rank 2: {line}"]


@pytest.mark.parametrize(
    ("rank", "said"), [("1", ""), ("0", "heedful: note: the schedule goes on, counted in batches\n")]
)
def test_a_note_is_said_by_the_first_process_of_a_machine_only(monkeypatch, capsys, rank, said):
    """A note (a resumed schedule, inputs cut to fit) follows warn's rule: of two processes on one
    machine, local rank 0 says it and local rank 1 keeps quiet."""
    torchrun(monkeypatch, "2", rank, rank)
    note("the schedule goes on, counted in batches")
    assert capsys.readouterr() == ("", said)


def test_a_note_alone_is_one_line(monkeypatch, capsys):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    note("sources longer than the model's 8 tokens were cut to them before translating: line 2")
    assert capsys.readouterr() == (
        "",
        "heedful: note: sources longer than the model's 8 tokens were cut to them before translating: line 2\n",
    )
