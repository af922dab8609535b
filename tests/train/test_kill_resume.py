"""kill -9 three times at random steps (mid-save or not), resume each time: the final weights
equal an uninterrupted run's bit for bit, and no complete checkpoint is ever unreadable. The CI
form of ``benchmarks/kill_resume.py`` (20 kills there, figures in docs/RESULTS.md)."""

import importlib.util

import pytest

from tests.conftest import ROOT


def load_benchmark():
    spec = importlib.util.spec_from_file_location("kill_resume", ROOT / "benchmarks" / "kill_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # five short trainings as subprocesses: ~1–1.5 min on 2 shared cores
def test_three_kills_and_resumes_end_bit_identical(tmp_path):
    result = load_benchmark().run(kills=3, seed=1, work=tmp_path / "work")
    assert result["kills"] == 3
    assert result["unreadable_checkpoints"] == []
    assert result["final_model_bit_identical"] and result["final_checkpoint_bit_identical"]
    assert result["train_losses_identical"]
