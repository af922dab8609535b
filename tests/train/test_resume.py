"""A resume may change how long and how visibly a run trains, not what it trains (train/resume.py)."""

import pytest

from heedful.errors import UserError
from heedful.runs import load_config
from heedful.train import fit
from heedful.train.resume import changed_settings, flat
from tests.conftest import ROOT, tiny_dates_overrides


@pytest.fixture
def one_epoch(tmp_path):
    run_dir = tmp_path / "run"
    fit(load_config(ROOT / "configs" / "dates.yaml", tiny_dates_overrides(run_dir, **{"train.epochs": 1})))
    return run_dir


def test_flat_names_every_leaf_by_its_dotted_key():
    assert flat({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


@pytest.mark.slow  # each trains a tiny run first
@pytest.mark.parametrize("override", ["model.position=rope", "model.activation=gelu", "model.n_heads=1"])
def test_a_resume_that_changes_the_model_is_refused_and_changes_nothing(one_epoch, override):
    """Each keeps every tensor's shape, so the checkpoint loaded and the run trained on as another model."""
    before = {p: p.read_bytes() for p in sorted(one_epoch.rglob("*")) if p.is_file()}
    key = override.partition("=")[0]
    cfg = load_config(one_epoch, ["train.epochs=2", override])
    with pytest.raises(UserError, match=rf"^--resume: {key} is .*, but .*run was trained with .*; a trained run's "
                                        r"model is fixed: start a new run \(train.init_from="):  # fmt: skip
        fit(cfg, resume=True)
    assert {p: p.read_bytes() for p in sorted(one_epoch.rglob("*")) if p.is_file()} == before


@pytest.mark.slow
def test_other_changes_are_named_once_and_how_long_it_trains_is_not(one_epoch, capsys):
    assert changed_settings(one_epoch, load_config(one_epoch, ["train.epochs=3", "train.progress=true"])) == []
    capsys.readouterr()
    fit(load_config(one_epoch, ["train.epochs=2", "data.val_size=40", "train.lr=0.003"]), resume=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        f"heedful: warning: resuming with settings changed from {one_epoch / 'config.yaml'}: "
        "data.val_size 32 → 40; train.lr 0.002 → 0.003"
    ]


@pytest.mark.slow
def test_a_finished_run_or_a_spent_budget_is_refused_not_trained_one_step(one_epoch, tmp_path):
    """Each resume of a run its time budget had stopped trained one step, validated and added an epoch."""
    before = {p: p.read_bytes() for p in sorted(one_epoch.rglob("*")) if p.is_file()}
    with pytest.raises(UserError, match=r"run: has trained all its 1 epochs \(train.epochs 1\); to train longer: "
                                        r"heedful train .*run --resume --set train.epochs=11$"):  # fmt: skip
        fit(load_config(one_epoch, []), resume=True)
    assert {p: p.read_bytes() for p in sorted(one_epoch.rglob("*")) if p.is_file()} == before

    budget = tmp_path / "budget"
    overrides = tiny_dates_overrides(budget, **{"train.epochs": 3, "train.max_minutes": 1e-9})
    history = fit(load_config(ROOT / "configs" / "dates.yaml", overrides))
    assert [row["step"] for row in history.epochs] == [1]  # the budget ends the run after its first step
    with pytest.raises(UserError, match=r"budget: its time budget is spent \(0.0 min of train.max_minutes 1e-09, "
                                        r"every session counted\); to train on: heedful train .*budget --resume "
                                        r"--set train.max_minutes=\d+ \(or null\)$"):  # fmt: skip
        fit(load_config(budget, ["train.epochs=5"]), resume=True)
    history = fit(load_config(budget, ["train.max_minutes=null"]), resume=True)  # a raised budget trains on
    assert [row["epoch"] for row in history.epochs] == [1, 2, 3]


@pytest.mark.slow
def test_the_schedule_goes_on_by_batches_when_a_resumed_step_takes_another_number(tmp_path, monkeypatch, capsys):
    """Resumed on 1 process, a 2-process run's cosine schedule started again from a longer plan
    (the lr jumped back up); grad_accum changes a step's batches the same way."""
    import heedful.train.trainer as trainer

    seen = []

    def recording(step, **kwargs):
        seen.append((step, kwargs["total_steps"]))
        return trainer_lr_at(step, **kwargs)

    trainer_lr_at = trainer.lr_at
    monkeypatch.setattr(trainer, "lr_at", recording)
    extra = {"train.epochs": 1, "train.steps_per_epoch": 8, "train.grad_accum": 2, "train.schedule": "cosine"}
    run_dir = tmp_path / "run"
    fit(load_config(ROOT / "configs" / "dates.yaml", tiny_dates_overrides(run_dir, **extra)))
    assert seen == [(s, 4) for s in (1.0, 2.0, 3.0, 4.0)]  # 8 batches, 2 a step: 4 steps an epoch
    seen.clear()
    fit(load_config(run_dir, ["train.epochs=2", "train.grad_accum=1"]), resume=True)
    assert seen == [(4.0 + k / 2, 8) for k in range(1, 9)]  # 8 steps of 1 batch: half a planned step each
    assert "an optimizer step now takes 1 global batches (processes × train.grad_accum), 2 when the run started; the " \
           "learning-rate schedule goes on where it was" in capsys.readouterr().err  # fmt: skip
