"""The speech task end to end on the Free Spoken Digit Dataset (skips without ../shared/data)."""

import subprocess
import sys

import pytest
import soundfile
import torch

from heedful.runs import load_config, load_run
from heedful.train import fit
from tests.conftest import SHARED_DATA

FSDD = SHARED_DATA / "fsdd"
pytestmark = pytest.mark.skipif(not FSDD.is_dir(), reason=f"FSDD not found at {FSDD} (see ../shared/data/README.md)")

TINY = {
    "data.root": str(FSDD),
    "model.conv_channels": "[8, 16]",
    "model.d_model": 32,
    "model.n_layers": 1,
    "model.n_heads": 2,
    "model.d_ff": 64,
    "train.epochs": 1,
    "train.batch_size": 64,
    "train.max_minutes": "null",
    "train.progress": "false",
    "train.tensorboard": "false",
    "device": "cpu",
}


def overrides(run_dir, **extra):
    values = {**TINY, "run_dir": str(run_dir), **extra}
    return [f"{k}={v}" for k, v in values.items()]


@pytest.mark.slow
def test_digits_train_evaluate_transcribe_and_show_attention(tmp_path, configs_dir):
    cfg = load_config(
        configs_dir / "speech_digits.yaml", overrides(tmp_path / "run", **{"train.epochs": 3, "train.lr": 3e-3})
    )
    history = fit(cfg)
    assert history["val_accuracy"][-1] > 0.2  # twice chance (0.1) after three tiny epochs
    run = load_run(tmp_path / "run", device="cpu")
    metrics = run.evaluate("test")
    speakers = {"george", "jackson", "lucas", "nicolas", "theo", "yweweler"}
    assert {f"accuracy_{s}" for s in speakers} <= set(metrics)
    wav = FSDD / "recordings" / "3_jackson_2.wav"
    (prediction,) = run.predict([str(wav)])
    assert prediction.output in "0123456789" and 0 < prediction.score <= 1
    (figure,) = run.show_attention([str(wav)])
    assert figure.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_speaker_split_holds_out_one_speaker_and_vtlp_warps_training_clips(tmp_path, configs_dir):
    only_vtlp = {"augment.speed": "null", "augment.noise_snr_db": "null", "augment.spec_augment": "false",
                 "augment.vtlp": "[1.1, 1.1]"}  # fmt: skip
    cfg = load_config(
        configs_dir / "speech_digits.yaml", overrides(tmp_path / "run", **{"data.split": "speaker:theo", **only_vtlp})
    )
    from heedful.tasks import get_task

    task = get_task("speech")(cfg)
    data = task.build_data(cfg)
    assert {u.speaker for u in data.splits["test"]} == {"theo"}
    assert len(data.splits["test"]) == 500
    assert "theo" not in {u.speaker for u in data.splits["val"]}
    clip = data.train.utterances[0]
    warped = task.augment(clip, torch.Generator().manual_seed(0))
    torch.testing.assert_close(warped, task.features(clip.wave, 1.1))
    assert not torch.allclose(warped, clip.features)  # the stored, unwarped features
    with pytest.raises(Exception, match="no speaker 'bob'"):
        bad = load_config(
            configs_dir / "speech_digits.yaml", overrides(tmp_path / "r2", **{"data.split": "speaker:bob"})
        )
        get_task("speech")(bad).build_data(bad)


@pytest.mark.slow
def test_strings_ctc_trains_and_scores_der(tmp_path, configs_dir):
    extra = {"data.n_train_strings": 64, "data.n_val_strings": 16, "data.n_test_strings": 16}
    cfg = load_config(configs_dir / "speech_strings.yaml", overrides(tmp_path / "run", **extra))
    history = fit(cfg)
    assert "val_der" in history.history
    metrics = load_run(tmp_path / "run", device="cpu").evaluate("test")
    assert 0 <= metrics["accuracy"] <= 1 and metrics["der"] >= 0


@pytest.mark.slow
def test_transcribe_cli_reports_bad_audio_in_one_line(tmp_path, configs_dir):
    fit(load_config(configs_dir / "speech_digits.yaml", overrides(tmp_path / "run")))
    stereo = tmp_path / "stereo.wav"
    soundfile.write(stereo, torch.randn(800, 2).numpy() * 0.1, 8000)  # transcribe mixes stereo down
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF\x00\x00")
    cli = [sys.executable, "-m", "heedful.cli", "transcribe", str(tmp_path / "run")]
    ok = subprocess.run([*cli, str(stereo)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "confidence" in ok.stdout, ok.stderr
    bad = subprocess.run([*cli, str(broken)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith(f"heedful: error: {broken}") and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_transcribe_layer_and_head_choose_the_figure_without_changing_the_run(tmp_path, configs_dir, monkeypatch):
    from typer.testing import CliRunner

    from heedful.cli import app
    from heedful.errors import UserError
    from heedful.tasks import get_task

    run_dir = tmp_path / "run"
    fit(load_config(configs_dir / "speech_digits.yaml", overrides(run_dir)))
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, torch.randn(4000).numpy() * 0.1, 8000)
    task_class, shown = get_task("speech"), []
    plot = task_class.plot_explanation

    def recording_plot(self, explanation, path):
        shown.append((self.cfg.decode.explain_layer, self.cfg.decode.explain_head))
        return plot(self, explanation, path)

    monkeypatch.setattr(task_class, "plot_explanation", recording_plot)
    args = ["transcribe", str(run_dir), str(clip), "--show-attention", "--layer", "0", "--head", "1"]
    result = CliRunner().invoke(app, [*args, "--out-dir", str(tmp_path / "figures"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert shown == [(0, 1)] and "attention figure:" in result.output
    assert load_config(run_dir).decode.explain_head is None  # the run itself is as trained

    refused = CliRunner().invoke(app, ["transcribe", str(run_dir), str(clip), "--head", "2", "--device", "cpu"])
    assert isinstance(refused.exception, UserError)
    assert str(refused.exception).endswith("decode.explain_head=2: the model has heads 0 to 1 (null: their mean)")
