import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from heedful.data.audio import read_audio
from heedful.data.fsdd import (
    DigitString,
    FsddRecording,
    build_digit_strings,
    check_disjoint,
    list_recordings,
    parse_file_name,
    shared_recordings,
    speaker_folds,
    split_recordings,
    standard_split,
    validation_split,
)
from heedful.errors import DataError
from tests.conftest import SHARED_DATA

FSDD = SHARED_DATA / "fsdd"
needs_fsdd = pytest.mark.skipif(
    not (FSDD / "recordings").is_dir(), reason=f"FSDD not found at {FSDD} (see ../shared/data/README.md)"
)


@pytest.fixture(scope="module")
def fsdd() -> list[FsddRecording]:
    if not (FSDD / "recordings").is_dir():
        pytest.skip(f"FSDD not found at {FSDD} (see ../shared/data/README.md)")
    return list_recordings(FSDD)


@pytest.fixture(scope="module")
def tiny_fsdd(tmp_path_factory) -> list[FsddRecording]:
    """A fake FSDD: 3 speakers × 10 digits × 8 takes of short tones (digit d at 300 + 100·d Hz)."""
    root = tmp_path_factory.mktemp("fsdd") / "recordings"
    root.mkdir()
    rng = np.random.default_rng(0)
    for speaker in ("ann", "bob", "cyd"):
        for digit in range(10):
            for index in range(8):
                n = int(rng.integers(400, 1200))
                wave = 0.3 * np.sin(2 * np.pi * (300 + 100 * digit) * np.arange(n) / 8000)
                sf.write(root / f"{digit}_{speaker}_{index}.wav", wave.astype(np.float32), 8000, subtype="PCM_16")
    return list_recordings(root.parent)


# ---------------------------------------------------------------------------------------------
# Listing


def test_parse_file_name():
    assert parse_file_name("/x/4_theo_17.wav") == FsddRecording(Path("/x/4_theo_17.wav"), 4, "theo", 17)
    assert parse_file_name("0_george_0.wav") == FsddRecording(Path("0_george_0.wav"), 0, "george", 0)
    for odd in ["12_theo_1.wav", "4_theo.wav", "4_theo_1.flac", "4_theo_x.wav", "README.md", "4_the o_1.wav"]:
        assert parse_file_name(odd) is None, odd


def test_list_recordings_skips_odd_names_with_a_count(tmp_path, capsys):
    for name in ["1_ann_0.wav", "2_ann_1.wav", "notes.txt", "1_ann.wav"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    recordings = list_recordings(tmp_path)
    assert [r.path.name for r in recordings] == ["1_ann_0.wav", "2_ann_1.wav"]
    assert capsys.readouterr().err == (
        f"heedful: warning: {tmp_path}: skipped 2 file(s) not named {{digit}}_{{speaker}}_{{index}}.wav "
        "(e.g. 1_ann.wav, notes.txt)\n"
    )


@pytest.mark.parametrize(
    ("takes", "split", "val_fraction", "message"),
    [
        ([5, 6], "standard", 0.1, "no test recordings (data.split 'standard' holds out takes 0–4 of every digit"),
        ([0, 1], "standard", 0.1, "no train recordings (data.split 'standard' leaves nothing else"),
        ([0, 5], "standard", 0.1, "no validation recordings (data.val_fraction 0.1 of the training recordings"),
        ([0], "speaker:ann", 0.1, "data.split 'speaker:ann' needs two or more speakers; the files have ['ann']"),
    ],
)
def test_a_folder_that_leaves_a_split_empty_is_refused(tmp_path, takes, split, val_fraction, message):
    """It trained, then divided by zero scoring the empty split (a traceback at the end of epoch 1)."""
    from types import SimpleNamespace

    (tmp_path / "recordings").mkdir()
    for take in takes:
        (tmp_path / "recordings" / f"3_ann_{take}.wav").write_bytes(b"")
    d = SimpleNamespace(root=tmp_path, split=split, val_fraction=val_fraction, extra_train_roots=[])
    with pytest.raises(DataError, match=rf"^{re.escape(str(tmp_path))}: {re.escape(message)}"):
        split_recordings(d, seed=0)


def test_list_recordings_names_a_missing_or_empty_folder(tmp_path):
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / 'nope'))}: FSDD folder not found"):
        list_recordings(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path))}: no FSDD recordings"):
        list_recordings(tmp_path)


# ---------------------------------------------------------------------------------------------
# Splits on the real data


@needs_fsdd
def test_the_real_data_set_lists_3000_recordings(fsdd):
    assert len(fsdd) == 3000
    assert len({r.speaker for r in fsdd}) == 6
    assert Counter(r.digit for r in fsdd) == dict.fromkeys(range(10), 300)
    assert list_recordings(FSDD / "recordings") == fsdd  # the data set folder or its recordings/


@needs_fsdd
def test_standard_split_sizes(fsdd):
    train, test = standard_split(fsdd)
    assert (len(train), len(test)) == (2700, 300)
    assert {r.index for r in test} == set(range(5))
    assert not set(train) & set(test)


@needs_fsdd
def test_speaker_folds_hold_out_one_speaker_each(fsdd):
    folds = speaker_folds(fsdd)
    assert len(folds) == 6
    assert sorted(f.held_out for f in folds) == sorted({r.speaker for r in fsdd})
    for held_out, train, test in folds:
        assert (len(train), len(test)) == (2500, 500)
        assert {r.speaker for r in test} == {held_out}
        assert held_out not in {r.speaker for r in train}


@needs_fsdd
def test_validation_split_is_stratified_seeded_and_apart_from_test(fsdd):
    train, test = standard_split(fsdd)
    kept, val = validation_split(train, 0.1, seed=0)
    assert (len(kept), len(val)) == (2430, 270)
    assert not set(kept) & set(val) and set(kept) | set(val) == set(train)
    assert not set(val) & set(test)
    per_group = Counter((r.digit, r.speaker) for r in val)
    assert len(per_group) == 60 and set(per_group.values()) <= {4, 5}
    assert validation_split(train[::-1], 0.1, seed=0) == (kept, val)  # input order does not matter
    assert validation_split(train, 0.1, seed=1)[1] != val


def test_validation_split_rejects_bad_fractions(tiny_fsdd):
    for fraction in (0, 1, 1.5, -0.1):
        with pytest.raises(ValueError, match="fraction"):
            validation_split(tiny_fsdd, fraction, seed=0)


# ---------------------------------------------------------------------------------------------
# Digit strings


def test_strings_are_one_speaker_and_labelled_by_their_sources(tiny_fsdd):
    strings = build_digit_strings(tiny_fsdd, 40, seed=0, sample_rate=8000)
    by_path = {r.path: r for r in tiny_fsdd}
    for s in strings:
        sources = [by_path[p] for p in s.sources]
        assert 2 <= len(s.label) <= 7
        assert s.label == "".join(str(r.digit) for r in sources)
        assert {r.speaker for r in sources} == {s.speaker}
        assert len(set(s.sources)) == len(s.sources)  # distinct takes within a string
        assert s.wave.dtype == np.float32 and s.starts[0] == 0 and s.ends[-1] == len(s.wave)
        for i, path in enumerate(s.sources):
            np.testing.assert_array_equal(s.wave[s.starts[i] : s.ends[i]], read_audio(path, 8000))
        for end, start in zip(s.ends, s.starts[1:], strict=False):
            assert 0.05 * 8000 - 1 <= start - end <= 0.4 * 8000 + 1
            assert not s.wave[end:start].any()  # silence between digits
    assert {len(s.label) for s in strings} == set(range(2, 8))
    assert len({s.speaker for s in strings}) == 3


def test_strings_are_reproducible_by_seed(tiny_fsdd):
    def fingerprint(strings: list[DigitString]) -> list[tuple]:
        return [(s.label, s.speaker, s.sources, s.starts, s.wave.tobytes()) for s in strings]

    a = build_digit_strings(tiny_fsdd, 10, seed=5, sample_rate=8000, noise_snr_db=20)
    b = build_digit_strings(tiny_fsdd[::-1], 10, seed=5, sample_rate=8000, noise_snr_db=20)
    c = build_digit_strings(tiny_fsdd, 10, seed=6, sample_rate=8000, noise_snr_db=20)
    assert fingerprint(a) == fingerprint(b)
    assert fingerprint(a) != fingerprint(c)


def test_strings_with_noise_hit_the_snr(tiny_fsdd):
    clean = build_digit_strings(tiny_fsdd, 3, seed=1, sample_rate=8000)
    noisy = build_digit_strings(tiny_fsdd, 3, seed=1, sample_rate=8000, noise_snr_db=10.0)
    for c, n in zip(clean, noisy, strict=True):
        assert c.label == n.label and n.snr_db == 10.0
        noise = n.wave.astype(np.float64) - c.wave
        assert 10 * math.log10(np.mean(c.wave.astype(np.float64) ** 2) / np.mean(noise**2)) == pytest.approx(
            10, abs=0.1
        )


def test_strings_resample_and_respect_lengths(tiny_fsdd):
    strings = build_digit_strings(tiny_fsdd, 5, seed=0, sample_rate=16000, min_digits=1, max_digits=1)
    for s in strings:
        assert len(s.label) == 1 and s.sample_rate == 16000
        assert len(s.wave) == pytest.approx(2 * sf.info(s.sources[0]).frames, abs=2)
    with pytest.raises(ValueError, match="min_digits"):
        build_digit_strings(tiny_fsdd, 1, seed=0, sample_rate=8000, min_digits=4, max_digits=3)
    with pytest.raises(ValueError, match="pause_range_s"):
        build_digit_strings(tiny_fsdd, 1, seed=0, sample_rate=8000, pause_range_s=(0.5, 0.1))


def test_train_and_test_strings_never_share_a_recording(tiny_fsdd):
    train, test = standard_split(tiny_fsdd)
    train_strings = build_digit_strings(train, 60, seed=0, sample_rate=8000)
    test_strings = build_digit_strings(test, 60, seed=0, sample_rate=8000)
    assert {p for s in test_strings for p in s.sources} <= {r.path for r in test}
    assert not shared_recordings(train_strings, test_strings)
    check_disjoint(train_strings, test_strings)
    check_disjoint(train_strings, test)  # strings against recordings works too
    with pytest.raises(DataError, match="used in both train and test"):
        check_disjoint(train_strings, train_strings[:1])


@needs_fsdd
def test_strings_from_the_real_test_set(fsdd):
    train, test = standard_split(fsdd)
    strings = build_digit_strings(test, 30, seed=0, sample_rate=8000, noise_snr_db=20)
    check_disjoint(train, strings)
    by_path = {r.path: r for r in fsdd}
    for s in strings:
        assert {by_path[p].speaker for p in s.sources} == {s.speaker}
        assert s.label == "".join(str(by_path[p].digit) for p in s.sources)
        assert torch.as_tensor(s.wave).isfinite().all()
