"""A task from outside heedful (tests/toy_task.py) joins the registry by name and brings its own
verb, train flag, results and run method: driven through the CLI and ``Run`` without any
change to heedful.cli or heedful.runs."""

from __future__ import annotations

import importlib
import json

import pytest
import yaml
from typer.testing import CliRunner

from heedful.cli import app
from heedful.errors import UserError
from heedful.runs import load_run
from heedful.tasks import registry
from heedful.tasks.base import EvalResult


@pytest.fixture
def toy(monkeypatch, tmp_path):
    """The toy task registered for one test; its config file."""
    monkeypatch.setitem(registry.MODULES, "toy", "tests.toy_task")
    module = importlib.import_module("tests.toy_task")
    monkeypatch.setitem(registry.TASKS, "toy", module.ToyTask)
    config = tmp_path / "toy.yaml"
    train = {"epochs": 4, "lr": 0.1, "batch_size": 32, "schedule": "constant", "warmup_steps": 0,
             "progress": False, "tensorboard": False, "max_minutes": None, "num_threads": 1}  # fmt: skip
    run_dir = tmp_path / "run"
    config.write_text(yaml.safe_dump({"task": "toy", "run_dir": str(run_dir), "device": "cpu", "train": train}))
    return config, run_dir


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_task_from_the_test_suite_through_the_cli_and_run(toy):
    config, run_dir = toy
    listed = invoke("--help")
    assert listed.exit_code == 0 and "signs" in listed.output
    assert "Say whether each number is positive or negative." in listed.output

    trained = invoke("train", config, "--margin", "0.25")
    assert trained.exit_code == 0, trained.output
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["margin"] == 0.25  # the task's flag

    said = invoke("signs", run_dir, "--", "4", "-3.5")
    assert said.exit_code == 0, said.output
    lines = said.output.splitlines()
    assert lines[0].startswith("4: positive (") and lines[1].startswith("-3.5: negative (")

    evaluated = invoke("evaluate", run_dir)
    assert evaluated.exit_code == 0, evaluated.output
    assert "test accuracy:" in evaluated.output and "test threshold:" in evaluated.output  # describe(): a note
    assert f"written: {run_dir / 'eval-test.json'}" in evaluated.output

    run = load_run(run_dir, "cpu")
    result = run.evaluate("test")
    assert isinstance(result, EvalResult) and result["accuracy"] >= 0.9 and set(result) == {"loss", "accuracy"}
    assert json.loads(result.artifacts["eval"].read_text())["threshold"] == pytest.approx(result.notes["threshold"])
    assert len(result.artifacts["hyps"].read_text().splitlines()) == 64
    [p] = run.predict([2.0])
    assert p.record() == {"input": 2.0, "output": "positive", "score": p.score, "probabilities": p.probabilities}
    assert run.signs_of([5.0, -5.0]) == ["positive", "negative"]  # the task's run method
    assert "signs_of" in dir(run)
    with pytest.raises(UserError, match=r"is a 'toy' run; translate needs a translate run"):
        run.translate(["a"])
    assert not hasattr(run, "no_such_method")


def test_a_task_flag_on_another_tasks_config_is_refused(toy):
    result = invoke("train", "configs/dates.yaml", "--margin", "1")
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == (
        "configs/dates.yaml: --margin: a flag for the toy numbers (task toy); this config's task (translate) "
        "reads none — use --set data.<field>=…"
    )


def test_a_verb_refuses_a_run_of_another_task(toy, tmp_path):
    config, run_dir = toy
    assert invoke("train", config).exit_code == 0
    result = invoke("translate", run_dir)
    assert isinstance(result.exception, UserError)
    assert str(result.exception) == f"{run_dir}: is a 'toy' run; translate needs a translate run"


def test_an_undefined_metric_is_written_as_null_so_the_record_is_json():
    """A correlation over one group is NaN: eval-test.json held `NaN`, which JavaScript and jq refuse."""
    import json
    import math

    result = EvalResult({"accuracy": 1.0, "group_spearman": math.nan}, notes={"n": [1, math.inf]})
    result.baselines = {"majority": {"accuracy": 0.5, "group_spearman": math.nan}}
    text = json.dumps(result.record(), allow_nan=False)  # raises on NaN or inf
    assert json.loads(text) == {"accuracy": 1.0, "group_spearman": None, "n": [1, None],
                                "baselines": {"majority": {"accuracy": 0.5, "group_spearman": None}}}  # fmt: skip
    assert math.isnan(result["group_spearman"])  # the result itself keeps what was measured
