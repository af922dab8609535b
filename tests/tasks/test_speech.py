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
    task.cfg.data.trim_db = None  # the shipped config trims: start from the clips as recorded
    untrimmed = task._load([loose, tight])
    assert untrimmed[0].features.shape[0] > untrimmed[1].features.shape[0] + 50
    task.cfg.data.trim_db = -35
    trimmed = task._load([loose, tight])  # the predict path; training clips go through the same _read
    assert trimmed[0].features.shape[0] < untrimmed[1].features.shape[0]
    torch.testing.assert_close(trimmed[0].features, trimmed[1].features)
    # data.trim_end_db reaches the same path: a −30 dB tail (0.1 s, 10 frames) is cut off the end.
    faded = tmp_path / "faded.wav"
    sf.write(faded, np.concatenate([sound, 0.03 * sound[:800], np.zeros(800)]).astype(np.float32), 8000)
    with_tail = task._load([faded])[0].features.shape[0]
    task.cfg.data.trim_end_db = -20
    assert with_tail - task._load([faded])[0].features.shape[0] in range(9, 12)


def test_trimming_or_cropping_strings_is_refused(configs_dir):
    with pytest.raises(ConfigError, match="trim_db works on single clips"):
        load_config(configs_dir / "speech_strings.yaml", ["data.trim_db=-35"])
    with pytest.raises(ConfigError, match="edge_crop works on single clips"):
        load_config(configs_dir / "speech_strings.yaml", ["augment.edge_crop=0.05"])
    with pytest.raises(ConfigError, match="trim_end_db needs trim_db"):
        load_config(configs_dir / "speech_digits.yaml", ["data.trim_db=null", "data.trim_end_db=-20"])


def test_edge_crop_reaches_the_training_features(tmp_path, fake_fsdd, configs_dir):
    task, cfg = speech_task(configs_dir, fake_fsdd, [])
    cfg.augment.edge_crop = 0.01  # up to 80 samples (one frame) off each end of a 400-sample clip
    cfg.augment.spec_augment = False
    data = task.build_data(cfg)
    utterance = data.train.utterances[0]
    assert utterance.wave is not None
    frames = {task.augment(utterance, torch.Generator().manual_seed(s)).shape[0] for s in range(30)}
    # Uncut: 1 + 400 // 80 = 6 frames. Any cut drops one; more than 80 samples in all drops two.
    assert frames == {4, 5}
    assert task.features(utterance.wave).shape[0] == 6


def test_tempo_reaches_the_training_features(tmp_path, fake_fsdd, configs_dir):
    task, cfg = speech_task(configs_dir, fake_fsdd, [])
    cfg.augment.tempo = (0.5, 1.0)  # up to twice as slow: 6 frames become 6–12
    cfg.augment.spec_augment = False
    data = task.build_data(cfg)
    utterance = data.train.utterances[0]
    assert utterance.features.shape[0] == 6
    frames = [task.augment(utterance, torch.Generator().manual_seed(s)).shape[0] for s in range(40)]
    assert set(frames) <= set(range(6, 13)) and len(set(frames)) >= 5  # drawn from the whole range
    same = [task.augment(utterance, torch.Generator().manual_seed(7)) for _ in range(2)]
    torch.testing.assert_close(same[0], same[1])  # reproducible from the generator
    with pytest.raises(ConfigError, match="0.25 <= low <= high <= 4"):
        load_config(configs_dir / "speech_digits.yaml", ["augment.tempo=[1.2, 0.8]"])


def test_reverb_reaches_the_training_features_at_its_rate(tmp_path, fake_fsdd, configs_dir):
    task, cfg = speech_task(configs_dir, fake_fsdd, [])
    cfg.augment.reverb, cfg.augment.reverb_prob = (0.1, 0.1), 0.5
    cfg.augment.vtlp, cfg.augment.spec_augment = None, False  # reverb alone keeps the waves
    data = task.build_data(cfg)
    utterance = data.train.utterances[0]
    assert utterance.wave is not None and utterance.features.shape[0] == 6
    frames = [task.augment(utterance, torch.Generator().manual_seed(s)).shape[0] for s in range(200)]
    # A 0.1 s room adds its tail down to −35 dB: 400 + 467 samples, 1 + 867 // 80 = 11 frames.
    assert set(frames) == {6, 11}
    assert 0.4 < frames.count(11) / len(frames) < 0.6  # reverb_prob
    with pytest.raises(ConfigError, match="0 < low <= high <= 2"):
        load_config(configs_dir / "speech_digits.yaml", ["augment.reverb=[0.5, 0.1]"])


def test_extra_recordings_reach_training_strings_only(tmp_path, fake_fsdd, configs_dir):
    synth = write_recordings(tmp_path / "synth", ("esusadam", "esgbrob"), takes=5)
    overrides = [f"data.root={fake_fsdd}", "data.split=speaker:cyd", f"data.extra_train_roots=[{synth}]",
                 "data.n_train_strings=60", "data.n_val_strings=6", "data.n_test_strings=6",
                 "augment.speed=null", "augment.noise_snr_db=null", "device=cpu"]  # fmt: skip
    cfg = load_config(configs_dir / "speech_strings.yaml", overrides)
    task = get_task("speech")(cfg)
    data = task.build_data(cfg)

    def speakers(utterances):
        return {u.speaker for u in utterances}

    assert speakers(data.train.utterances) & {"esusadam", "esgbrob"}  # synthetic strings are trained on…
    assert speakers(data.splits["val"]) <= {"ann", "bob"}  # …but never select the model…
    assert speakers(data.splits["test"]) == {"cyd"}  # …nor are scored
    for u in data.splits["val"] + data.splits["test"]:
        assert str(synth) not in u.source


def test_a_silent_or_one_sample_file_is_transcribed_with_a_warning(tmp_path, configs_dir, capsys):
    """They got digits and a confidence, and no word that the model heard nothing."""
    task = get_task("speech")(load_config(configs_dir / "speech_digits.yaml", ["data.trim_db=null", "device=cpu"]))
    silent, short, tone = tmp_path / "silent.wav", tmp_path / "short.wav", tmp_path / "tone.wav"
    sf.write(silent, np.zeros(4000, np.float32), 8000, subtype="PCM_16")
    sf.write(short, np.full(1, 0.5, np.float32), 8000, subtype="PCM_16")
    sf.write(tone, (0.3 * np.sin(np.arange(4000) / 3)).astype(np.float32), 8000, subtype="PCM_16")
    for _ in range(2):  # transcribe --show-attention reads each file twice: one warning a file
        assert len(task._load([silent, short, tone])) == 3
    assert capsys.readouterr().err.splitlines() == [
        f"heedful: warning: {silent}: silent; its transcription means nothing",
        f"heedful: warning: {short}: too short (1 sample, 0.1 ms); its transcription means nothing",
    ]


def test_the_files_warned_about_are_remembered_up_to_a_bound(tmp_path, configs_dir, capsys, monkeypatch):
    """A server lives on: it remembers the most recent silent files, not every one it was sent."""
    from heedful.tasks import speech

    monkeypatch.setattr(speech, "WARNED_EMPTY_KEPT", 2, raising=False)  # without a bound, the asserts say so
    task = get_task("speech")(load_config(configs_dir / "speech_digits.yaml", ["data.trim_db=null", "device=cpu"]))
    files = [tmp_path / f"silent-{i}.wav" for i in range(3)]
    for path in files:
        sf.write(path, np.zeros(4000, np.float32), 8000, subtype="PCM_16")
    task._load(files[:2])
    task._load(files[:1])  # seen again: the most recent now, so the next one pushes out silent-1
    task._load(files[2:])
    assert len(task._warned_empty) == 2
    task._load([files[0], files[2], files[1]])  # kept: quiet; forgotten: warned again
    assert capsys.readouterr().err.splitlines() == [
        f"heedful: warning: {path}: silent; its transcription means nothing" for path in [*files, files[1]]
    ]
