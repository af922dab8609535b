"""Ensembles of speech runs (``heedful.runs.Ensemble``, ``transcribe --ensemble``), on two tiny
runs trained on a fake FSDD of tones: fast, and no ../shared/data needed."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from heedful.errors import UserError
from heedful.runs import Ensemble, load_config, load_ensemble, load_run
from heedful.train import fit
from tests.tasks.test_speech import write_recordings

pytestmark = pytest.mark.slow  # every test here trains a run end to end

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

TINY = {"model.conv_channels": "[8, 16]", "model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2,
        "model.d_ff": 64, "train.epochs": 2, "train.batch_size": 16, "train.max_minutes": "null",
        "train.progress": "false", "train.tensorboard": "false", "data.split": "speaker:cyd",
        "device": "cpu"}  # fmt: skip


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """Two runs of one config, seeds 0 and 1, and some of the held-out speaker's clips."""
    base = tmp_path_factory.mktemp("ensemble")
    root = write_recordings(base / "fsdd" / "recordings", ("ann", "bob", "cyd")).parent
    dirs = []
    for seed in (0, 1):
        values = {**TINY, "data.root": str(root), "run_dir": str(base / f"run{seed}"), "seed": seed}
        fit(load_config(CONFIGS / "speech_digits.yaml", [f"{k}={v}" for k, v in values.items()]))
        dirs.append(base / f"run{seed}")
    clips = [str(root / "recordings" / f"{digit}_cyd_0.wav") for digit in range(10)]
    return dirs[0], dirs[1], clips


def test_an_ensemble_averages_its_members_probabilities(two_runs):
    first, second, clips = two_runs
    a, b = load_run(first, device="cpu"), load_run(second, device="cpu")
    probs_a, classes = a.task.class_probabilities(a.model, clips)
    probs_b, _ = b.task.class_probabilities(b.model, clips)
    assert classes == [str(d) for d in range(10)] and probs_a.shape == (10, 10)
    assert not torch.allclose(probs_a, probs_b)  # two seeds: the average is not either member
    # A member's probabilities are the ones its own predict reports.
    for p, row in zip(a.predict(clips), probs_a, strict=True):
        assert p.output == str(int(row.argmax())) and p.score == pytest.approx(float(row.max()), abs=1e-6)
        assert list(p.probabilities) == classes  # every digit's probability, as every classifier gives
        assert list(p.probabilities.values()) == pytest.approx(row.tolist(), abs=1e-6)
    mean = (probs_a + probs_b) / 2
    ensemble = load_ensemble([first, second], device="cpu")
    torch.testing.assert_close(ensemble.class_probabilities(clips)[0], mean)
    for p, row in zip(ensemble.predict(clips), mean, strict=True):
        assert p.output == str(int(row.argmax())) and p.score == pytest.approx(float(row.max()), abs=1e-6)
        assert list(p.probabilities.values()) == pytest.approx(row.tolist(), abs=1e-6)


def test_an_ensemble_of_one_run_twice_predicts_as_that_run(two_runs):
    run = load_run(two_runs[0], device="cpu")
    alone, doubled = run.predict(two_runs[2]), Ensemble([run, run]).predict(two_runs[2])
    assert [p.output for p in doubled] == [p.output for p in alone]
    assert [p.score for p in doubled] == pytest.approx([p.score for p in alone], abs=1e-6)


def test_ctc_runs_and_mixed_tasks_are_refused(two_runs):
    run = load_run(two_runs[0], device="cpu")
    ctc = load_run(two_runs[1], device="cpu")
    ctc.cfg.model.head = "ctc"  # the guard reads the config: no CTC training needed
    with pytest.raises(UserError, match=f"^{ctc.run_dir}: .*only classifier runs"):
        Ensemble([run, ctc])  # refused when formed, naming the run
    other = load_run(two_runs[1], device="cpu")
    other.cfg = other.cfg.model_copy(update={"task": "classify"})  # only the task's name is read
    with pytest.raises(UserError, match="must be of one task"):
        Ensemble([run, other])
    with pytest.raises(UserError, match="at least one run"):
        Ensemble([])


def test_transcribe_cli_averages_the_ensemble(two_runs):
    first, second, clips = two_runs
    cli = [sys.executable, "-m", "heedful.cli", "transcribe", str(first), *clips[:3], "--ensemble", str(second)]
    done = subprocess.run([*cli, "--json", "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    expected = load_ensemble([first, second], device="cpu").predict(clips[:3])
    assert [r["digits"] for r in printed] == [p.output for p in expected]
    assert [r["confidence"] for r in printed] == pytest.approx([p.score for p in expected], abs=1e-6)
    missing = subprocess.run([*cli[:-1], str(first.parent / "nowhere")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "nowhere" in missing.stderr and len(missing.stderr.strip().splitlines()) == 1


def test_transcribe_json_with_show_attention_prints_only_json_on_stdout(two_runs, tmp_path):
    first, _, clips = two_runs
    figures = tmp_path / "figures"
    cli = [sys.executable, "-m", "heedful.cli", "transcribe", str(first), *clips[:2], "--show-attention"]
    done = subprocess.run([*cli, "--json", "--out-dir", str(figures), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["file"] for line in done.stdout.splitlines()] == clips[:2]
    shown = [line.removeprefix("attention figure: ") for line in done.stderr.splitlines() if "figure: " in line]
    assert len(shown) == 2 and all(Path(p).parent == figures and Path(p).is_file() for p in shown)


def test_an_ensemble_is_scored_on_the_held_out_split_as_its_runs_are(two_runs):
    first, second, _ = two_runs
    a, b = load_run(first, device="cpu"), load_run(second, device="cpu")
    clips = a.task.split_inputs("test")  # the held-out speaker's 40 files
    assert len(clips) == 40 and all("_cyd_" in Path(c).name for c in clips)
    probs_a, _ = a.task.class_probabilities(a.model, clips)
    probs_b, _ = b.task.class_probabilities(b.model, clips)
    digits = torch.tensor([int(Path(c).name.split("_")[0]) for c in clips])
    expected = float(((probs_a + probs_b).argmax(-1) == digits).float().mean())
    ensemble = load_ensemble([first, second], device="cpu")
    metrics = ensemble.evaluate("test")
    assert metrics["accuracy"] == pytest.approx(expected) and metrics["accuracy_cyd"] == pytest.approx(expected)
    # A member's accuracy here is the one its own evaluate reports (features built as in training).
    alone = load_run(first, device="cpu").evaluate("test")
    assert metrics["member_1_accuracy"] == pytest.approx(alone["accuracy"])
    single = Ensemble([load_run(first, device="cpu")]).evaluate("test")
    assert single["loss"] == pytest.approx(alone["loss"], abs=1e-4)
    written = json.loads((first / "eval-test-ensemble.json").read_text())
    assert written["members"] == [str(first)] and written["accuracy"] == pytest.approx(alone["accuracy"])
    # Seeds 0 and 1 draw different validation clips: refused, naming the run.
    with pytest.raises(UserError, match=f"^{second}: holds out other val examples"):
        ensemble.evaluate("val")


def test_evaluate_cli_scores_the_ensemble(two_runs):
    first, second, _ = two_runs
    cli = [sys.executable, "-m", "heedful.cli", "evaluate", str(first), "--ensemble", str(second), "--device", "cpu"]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    printed = dict(line.rsplit(": ", 1) for line in done.stdout.splitlines() if line.startswith("test "))
    expected = load_ensemble([first, second], device="cpu").evaluate("test")
    assert float(printed["test accuracy"]) == pytest.approx(expected["accuracy"], abs=1e-4)
    assert float(printed["test member_2_accuracy"]) == pytest.approx(expected["member_2_accuracy"], abs=1e-4)
    assert f"written: {first / 'eval-test-ensemble.json'}" in done.stdout
