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


def test_other_changes_are_named_once_and_how_long_it_trains_is_not(one_epoch, capsys):
    assert changed_settings(one_epoch, load_config(one_epoch, ["train.epochs=3", "train.progress=true"])) == []
    capsys.readouterr()
    fit(load_config(one_epoch, ["train.epochs=2", "data.val_size=40", "train.lr=0.003"]), resume=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [
        f"heedful: warning: resuming with settings changed from {one_epoch / 'config.yaml'}: "
        "data.val_size 32 → 40; train.lr 0.002 → 0.003"
    ]


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
