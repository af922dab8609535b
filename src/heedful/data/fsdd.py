"""The Free Spoken Digit Dataset (FSDD): recordings, splits, and spoken digit strings built
from them.

FSDD holds 3,000 isolated digits, ``{digit}_{speaker}_{index}.wav`` (6 speakers × 10 digits ×
50 takes, 8 kHz mono). Two splits are standard: the dataset's own (takes 0–4 are the test set)
and leave-one-speaker-out. Model selection must never look at the test set, so validation is
carved out of the training part with :func:`validation_split`.

Isolated digits make a classification task; a recognizer needs sequences. :func:`build_digit_strings`
concatenates several recordings of one speaker with random pauses between them — "4071" spoken
by theo — so a CTC model has to find where each digit is. A string is built only from the
recordings it is given: pass the test recordings and every string is a test string. Each string
keeps its source files and the sample where each digit starts, so leaks can be checked
(:func:`shared_recordings`) and attention can be compared with the true digit positions.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from heedful.data.audio import add_noise, read_audio
from heedful.errors import ConfigError, DataError, warn

FSDD_SAMPLE_RATE = 8000
TEST_INDICES = range(5)  # the dataset's README: takes 0-4 of every digit and speaker are the test set
FILE_NAME = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[A-Za-z]+)_(?P<index>[0-9]+)\.wav$")


@dataclass(frozen=True)
class FsddRecording:
    """One FSDD file: ``{digit}_{speaker}_{index}.wav``."""

    path: Path
    digit: int
    speaker: str
    index: int


def _order(r: FsddRecording) -> tuple[str, int, int, Path]:
    """The one order every list here comes in: speaker, digit, take."""
    return r.speaker, r.digit, r.index, r.path


# --------------------------------------------------------------------------------------------
# Listing and splitting


def parse_file_name(path: str | Path) -> FsddRecording | None:
    """``…/4_theo_17.wav`` → FsddRecording(path, 4, "theo", 17); None when the name doesn't fit."""
    path = Path(path)
    match = FILE_NAME.match(path.name)
    if match is None:
        return None
    return FsddRecording(path, int(match["digit"]), match["speaker"], int(match["index"]))


def list_recordings(root: str | Path) -> list[FsddRecording]:
    """Every ``{digit}_{speaker}_{index}.wav`` in ``root`` (or in ``root/recordings``), sorted
    by speaker, digit and index. Other files are skipped with a logged warning that counts them.
    """
    root = Path(root)
    folder = root / "recordings" if (root / "recordings").is_dir() else root
    if not folder.is_dir():
        raise DataError(
            f"{root}: FSDD folder not found (expected the recordings/*.wav of the Free Spoken Digit Dataset)"
        )
    recordings: list[FsddRecording] = []
    skipped: list[str] = []
    for path in sorted(folder.iterdir()):
        if not path.is_file():
            continue
        recording = parse_file_name(path)
        if recording is None:
            skipped.append(path.name)
        else:
            recordings.append(recording)
    if not recordings:
        raise DataError(f"{folder}: no FSDD recordings ({{digit}}_{{speaker}}_{{index}}.wav) in this folder")
    if skipped:
        warn(
            f"{folder}: skipped {len(skipped)} file(s) not named {{digit}}_{{speaker}}_{{index}}.wav "
            f"(e.g. {', '.join(skipped[:3])})"
        )
    return sorted(recordings, key=_order)


def standard_split(recordings: Iterable[FsddRecording]) -> tuple[list[FsddRecording], list[FsddRecording]]:
    """The dataset's own split: ``(train, test)`` with takes 0–4 in test (2,700 / 300 files)."""
    train, test = [], []
    for r in recordings:
        (test if r.index in TEST_INDICES else train).append(r)
    return train, test


class SpeakerFold(NamedTuple):
    held_out: str
    train: list[FsddRecording]
    test: list[FsddRecording]


def speaker_folds(recordings: Iterable[FsddRecording]) -> list[SpeakerFold]:
    """Leave one speaker out: one ``(held_out_speaker, train, test)`` per speaker, sorted by
    name. The speaker-independent split (6 folds of 2,500 / 500 files on FSDD)."""
    recordings = list(recordings)
    speakers = sorted({r.speaker for r in recordings})
    if len(speakers) < 2:
        raise ValueError(f"leave-one-speaker-out needs at least 2 speakers, got {speakers}")
    return [
        SpeakerFold(
            held_out=s,
            train=[r for r in recordings if r.speaker != s],
            test=[r for r in recordings if r.speaker == s],
        )
        for s in speakers
    ]


def validation_split(
    train: Iterable[FsddRecording], fraction: float = 0.1, *, seed: int
) -> tuple[list[FsddRecording], list[FsddRecording]]:
    """Carve a validation set out of the training recordings: ``(train, val)``.

    Stratified by (digit, speaker): every group gives ``fraction`` of its recordings, rounded so
    that the total is ``round(fraction * n)`` (groups whose share has the largest remainder — ties
    broken by the seed — give one more). Seeded; the input order does not matter.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must lie strictly between 0 and 1, got {fraction}")
    rng = random.Random(seed)
    groups: dict[tuple[int, str], list[FsddRecording]] = defaultdict(list)
    for r in sorted(train, key=_order):
        groups[(r.digit, r.speaker)].append(r)
    keys = sorted(groups)
    quotas = {k: fraction * len(groups[k]) for k in keys}
    counts = {k: int(quotas[k]) for k in keys}
    total = round(fraction * sum(len(g) for g in groups.values()))
    tie_break = {k: rng.random() for k in keys}
    by_remainder = sorted(keys, key=lambda k: (-(quotas[k] - counts[k]), tie_break[k]))
    for k in by_remainder[: total - sum(counts.values())]:
        counts[k] += 1
    kept, val = [], []
    for k in keys:
        members = groups[k][:]
        rng.shuffle(members)
        val.extend(members[: counts[k]])
        kept.extend(members[counts[k] :])
    return sorted(kept, key=_order), sorted(val, key=_order)


# --------------------------------------------------------------------------------------------
# Digit strings


@dataclass(frozen=True, eq=False)
class DigitString:
    """Several recordings of one speaker, concatenated with silence between them.

    ``wave`` is float32 ``(T,)`` at ``sample_rate``; digit i (``label[i]``, from ``sources[i]``)
    occupies samples ``starts[i]:ends[i]``.
    """

    wave: np.ndarray
    label: str
    speaker: str
    sources: tuple[Path, ...]
    starts: tuple[int, ...]
    ends: tuple[int, ...]
    sample_rate: int
    snr_db: float | None = None


def build_digit_strings(
    recordings: Sequence[FsddRecording],
    n: int,
    *,
    seed: int,
    sample_rate: int,
    min_digits: int = 2,
    max_digits: int = 7,
    pause_range_s: tuple[float, float] = (0.05, 0.4),
    noise_snr_db: float | None = None,
) -> list[DigitString]:
    """``n`` spoken digit strings drawn from ``recordings`` only.

    Each string: a speaker uniformly among those present, a length uniform in
    ``[min_digits, max_digits]``, that many of the speaker's recordings (distinct when the
    speaker has enough), and a silence uniform in ``pause_range_s`` seconds between consecutive
    digits. With ``noise_snr_db``, white noise at that SNR (over the whole string) is added.
    The same ``seed`` and the same set of recordings give the same strings, in any input order.
    """
    _check_string_args(n, min_digits, max_digits, pause_range_s)
    by_speaker: dict[str, list[FsddRecording]] = defaultdict(list)
    for r in sorted(recordings, key=_order):
        by_speaker[r.speaker].append(r)
    if not by_speaker:
        raise ValueError("build_digit_strings needs at least one recording")
    speakers = sorted(by_speaker)
    rng = random.Random(seed)
    noise_generator = torch.Generator().manual_seed(seed)
    waves: dict[Path, np.ndarray] = {}  # each file is read once
    strings = []
    for _ in range(n):
        speaker = rng.choice(speakers)
        pool = by_speaker[speaker]
        k = rng.randint(min_digits, max_digits)
        chosen = rng.sample(pool, k) if len(pool) >= k else rng.choices(pool, k=k)
        pauses = [round(rng.uniform(*pause_range_s) * sample_rate) for _ in range(k - 1)]
        for r in chosen:
            if r.path not in waves:
                waves[r.path] = read_audio(r.path, sample_rate)
        strings.append(_concatenate(chosen, pauses, waves, sample_rate, noise_snr_db, noise_generator))
    return strings


def _check_string_args(n: int, min_digits: int, max_digits: int, pause_range_s: tuple[float, float]) -> None:
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= min_digits <= max_digits:
        raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
    low, high = pause_range_s
    if not 0 <= low <= high:
        raise ValueError(f"pause_range_s must be (low, high) seconds with 0 <= low <= high, got {pause_range_s}")


def _concatenate(
    chosen: list[FsddRecording],
    pauses: list[int],
    waves: dict[Path, np.ndarray],
    sample_rate: int,
    noise_snr_db: float | None,
    noise_generator: torch.Generator,
) -> DigitString:
    pieces: list[np.ndarray] = []
    starts, ends = [], []
    position = 0
    for i, r in enumerate(chosen):
        if i > 0:
            pieces.append(np.zeros(pauses[i - 1], dtype=np.float32))
            position += pauses[i - 1]
        wave = waves[r.path]  # (T_i,)
        starts.append(position)
        pieces.append(wave)
        position += wave.shape[0]
        ends.append(position)
    wave = np.concatenate(pieces)  # (T,)
    if noise_snr_db is not None:
        wave = add_noise(wave, noise_snr_db, noise_generator)
    return DigitString(
        wave=wave,
        label="".join(str(r.digit) for r in chosen),
        speaker=chosen[0].speaker,
        sources=tuple(r.path for r in chosen),
        starts=tuple(starts),
        ends=tuple(ends),
        sample_rate=sample_rate,
        snr_db=noise_snr_db,
    )


def recording_paths(items: Iterable[DigitString | FsddRecording]) -> set[Path]:
    """The resolved source files behind recordings or digit strings."""
    paths: set[Path] = set()
    for item in items:
        sources = item.sources if isinstance(item, DigitString) else (item.path,)
        paths.update(p.resolve() for p in sources)
    return paths


def shared_recordings(a: Iterable[DigitString | FsddRecording], b: Iterable[DigitString | FsddRecording]) -> set[Path]:
    """Source files used on both sides: empty when, e.g., train and test strings don't leak."""
    return recording_paths(a) & recording_paths(b)


def check_disjoint(
    a: Iterable[DigitString | FsddRecording],
    b: Iterable[DigitString | FsddRecording],
    names: tuple[str, str] = ("train", "test"),
) -> None:
    """Raise DataError if the two collections share a source recording (a train/test leak)."""
    shared = shared_recordings(a, b)
    if shared:
        example = sorted(shared)[0]
        raise DataError(f"{example}: used in both {names[0]} and {names[1]} ({len(shared)} shared recording(s))")


def split_recordings(d: Any, seed: int) -> tuple[list[FsddRecording], list[FsddRecording], list[FsddRecording]]:
    """train / val / test recordings as the speech task's data section ``d`` says (``root``,
    ``split``: standard or speaker:<name>, ``val_fraction``, ``extra_train_roots``); validation
    is drawn from the training part with ``seed``."""
    recordings = list_recordings(d.root)
    if d.split == "standard":
        train, test = standard_split(recordings)
    else:
        speaker = d.split.split(":", 1)[1]
        speakers = sorted({r.speaker for r in recordings})
        if len(speakers) < 2:
            raise DataError(f"{d.root}: data.split {d.split!r} needs two or more speakers; the files have {speakers}")
        folds = {fold.held_out: fold for fold in speaker_folds(recordings)}
        if speaker not in folds:
            raise ConfigError(f"config key 'data.split': no speaker {speaker!r}; have {', '.join(sorted(folds))}")
        train, test = folds[speaker].train, folds[speaker].test
    train, val = validation_split(train, d.val_fraction, seed=seed)
    # Extras join after the validation split: the model is selected on real voices only.
    train += extra_train_recordings(d.extra_train_roots, {r.speaker for r in recordings})
    held_out = "takes 0–4 of every digit and speaker" if d.split == "standard" else "that speaker"
    for name, split, why in [
        ("test", test, f"data.split {d.split!r} holds out {held_out}"),
        ("train", train, f"data.split {d.split!r} leaves nothing else"),
        ("validation", val, f"data.val_fraction {d.val_fraction} of the training recordings rounds to none"),
    ]:
        if not split:  # it trained, then divided by zero scoring the empty split
            raise DataError(f"{d.root}: no {name} recordings ({why}; files are named digit_speaker_take.wav)")
    check_disjoint(train, test)
    check_disjoint(train, val, ("train", "val"))
    return train, val, test


def extra_train_recordings(roots: list[Path], fsdd_speakers: set[str]) -> list[FsddRecording]:
    """The recordings of ``data.extra_train_roots``, refusing a speaker FSDD also has: the
    held-out speaker's name on an extra voice would blur the speaker-independent split."""
    extra: list[FsddRecording] = []
    for root in roots:
        if not root.is_dir():
            raise DataError(f"{root}: extra training folder not found (config key 'data.extra_train_roots')")
        recordings = list_recordings(root)  # DataError naming the folder when it holds none
        shared = sorted({r.speaker for r in recordings} & fsdd_speakers)
        if shared:
            raise ConfigError(
                f"config key 'data.extra_train_roots': {root} has speaker {shared[0]!r}, which FSDD also has "
                "(it would blur the speaker-independent split); rename those files"
            )
        extra += recordings
    return extra
