"""The speech task's splits with extra training voices (``data.extra_train_roots``), on fake FSDD
folders of short tones: fast, and no ../shared/data needed."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from heedful.errors import ConfigError, DataError
from heedful.runs import load_config
from heedful.tasks import get_task


def write_recordings(folder: Path, speakers: tuple[str, ...], takes: int = 4) -> Path:
    """``{digit}_{speaker}_{index}.wav`` tones (digit d at 300 + 100·d Hz), 8 kHz 16-bit."""
    folder.mkdir(parents=True)
    n = 400  # 50 ms: a few feature frames are all the splits need
    for speaker in speakers:
        for digit in range(10):
            tone = 0.3 * np.sin(2 * np.pi * (300 + 100 * digit) * np.arange(n) / 8000)
            for index in range(takes):
                sf.write(folder / f"{digit}_{speaker}_{index}.wav", tone.astype(np.float32), 8000, subtype="PCM_16")
    return folder


def speech_task(configs_dir: Path, root: Path, extra: list[Path]):
    roots = ", ".join(map(str, extra))
    overrides = [f"data.root={root}", "data.split=speaker:cyd", f"data.extra_train_roots=[{roots}]",
                 "augment.speed=null", "augment.noise_snr_db=null", "device=cpu"]  # fmt: skip
    cfg = load_config(configs_dir / "speech_digits.yaml", overrides)
    return get_task("speech")(cfg), cfg


@pytest.fixture
def fake_fsdd(tmp_path) -> Path:
    return write_recordings(tmp_path / "fsdd" / "recordings", ("ann", "bob", "cyd")).parent


def test_extra_recordings_join_training_only(tmp_path, fake_fsdd, configs_dir):
    synth = write_recordings(tmp_path / "synth", ("esusadam", "esgbrob"), takes=5)
    task, cfg = speech_task(configs_dir, fake_fsdd, [synth])
    train, val, test = task._splits()
    extra = {p.resolve() for p in synth.iterdir()}
    train_paths = {r.path.resolve() for r in train}
    assert extra <= train_paths  # all 100 synthetic clips are trained on…
    assert not extra & {r.path.resolve() for r in val}  # …none selects the model…
    assert not extra & {r.path.resolve() for r in test}  # …and none is scored
    assert {r.speaker for r in test} == {"cyd"} and {r.speaker for r in val} == {"ann", "bob"}
    assert len(train) == 2 * 40 - len(val) + 100  # ann and bob's 80 clips split as before, plus the extras
    data = task.build_data(cfg)
    assert data.info["n_train"] == len(train)


def test_extra_speaker_with_an_fsdd_name_is_refused(tmp_path, fake_fsdd, configs_dir):
    clash = write_recordings(tmp_path / "clash", ("esusadam", "cyd"), takes=1)
    task, _ = speech_task(configs_dir, fake_fsdd, [clash])
    with pytest.raises(
        ConfigError, match=r"^config key 'data.extra_train_roots': .*clash has speaker 'cyd', which FSDD"
    ):
        task._splits()


def test_missing_or_empty_extra_folder_is_a_one_line_data_error(tmp_path, fake_fsdd, configs_dir):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=f"^{missing}: extra training folder not found"):
        speech_task(configs_dir, fake_fsdd, [missing])[0]._splits()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no wavs here")
    with pytest.raises(DataError, match=f"^{empty}: no FSDD recordings") as caught:
        speech_task(configs_dir, fake_fsdd, [empty])[0]._splits()
    assert "\n" not in str(caught.value)


def test_trimming_cuts_every_clip_the_same_way(tmp_path, fake_fsdd, configs_dir):
    sound = (0.3 * np.sin(2 * np.pi * 440 * np.arange(2000) / 8000)).astype(np.float32)
    loose, tight = tmp_path / "loose.wav", tmp_path / "tight.wav"
    sf.write(loose, np.concatenate([np.zeros(2400), sound, np.zeros(3200)]).astype(np.float32), 8000)
    sf.write(tight, np.concatenate([np.zeros(500), sound, np.zeros(500)]).astype(np.float32), 8000)
    task, _ = speech_task(configs_dir, fake_fsdd, [])
    untrimmed = task._load([loose, tight])
    assert untrimmed[0].features.shape[0] > untrimmed[1].features.shape[0] + 50
    task.cfg.data.trim_db = -35
    trimmed = task._load([loose, tight])  # the predict path; training clips go through the same _read
    assert trimmed[0].features.shape[0] < untrimmed[1].features.shape[0]
    torch.testing.assert_close(trimmed[0].features, trimmed[1].features)


def test_trimming_strings_is_refused(configs_dir):
    with pytest.raises(ConfigError, match="trim_db works on single clips"):
        load_config(configs_dir / "speech_strings.yaml", ["data.trim_db=-35"])
