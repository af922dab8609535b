"""Audio in, log-mel features out, and the augmentations a small speech recognizer needs.

Why our own filterbank and STFT wrapper instead of torchaudio or librosa at run time: torchaudio
is not a dependency, and librosa is heavy (numba, scikit-learn) for the 40 lines we need. The mel
scale and the filter normalisation are librosa's defaults (Slaney's Auditory Toolbox), so
features match librosa's to float precision and a reader can check them against a reference;
the tests do.

Conventions:
- A waveform is a float32 ``np.ndarray`` of shape ``(T,)`` in [-1, 1], one channel.
- Features are a float32 ``torch.Tensor`` of shape ``(frames, n_mels)``: time first, as a
  sequence model reads them.
- Randomness comes from a ``torch.Generator`` the caller owns, so a batch depends only on the
  seed it was built from (what the trainer needs to resume bit-identically).

Bad audio is a user's problem, not a bug: every failure to read a file raises
:class:`heedful.errors.DataError` with one line that starts with the file path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from heedful.errors import DataError
from heedful.extras import optional_import

# 8 kHz speech: a 25 ms window (200 samples) every 10 ms (80 samples), zero-padded to a
# 256-point FFT (31.25 Hz bins); 40 mel bands keep every band at least one FFT bin wide.
DEFAULT_N_FFT, DEFAULT_HOP, DEFAULT_WIN, DEFAULT_N_MELS = 256, 80, 200, 40
LOG_FLOOR = 1e-6  # added before the log, so silence gives log(1e-6) ≈ -13.8 rather than -inf
RESAMPLE_QUALITY = "HQ"

MonoPolicy = Literal["error", "mix"]


# --------------------------------------------------------------------------------------------
# Reading


def read_audio(
    path: str | Path,
    target_rate: int,
    *,
    mono: MonoPolicy = "error",
    before_reading: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Read a WAV/FLAC (anything libsndfile reads) as float32 ``(T,)`` at ``target_rate`` Hz.

    The file is resampled with soxr (quality "HQ") when its rate differs. A file with several
    channels is averaged to one under ``mono="mix"`` and refused under ``mono="error"``.
    Raises DataError (``<path>: <problem>``) for a missing, empty, unreadable or truncated file.
    ``before_reading`` is called with the length the header gives, in samples at ``target_rate``,
    before any sample is read: a length check there costs nothing (a header claiming 1 Hz made a
    40 KB file into 20,000 s of audio, 4 GB once resampled).
    """
    if target_rate <= 0:
        raise ValueError(f"target_rate must be a positive number of Hz, got {target_rate}")
    if mono not in ("error", "mix"):
        raise ValueError(f"mono must be 'error' or 'mix', got {mono!r}")
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    sf = optional_import("soundfile", "reading audio")
    try:
        with sf.SoundFile(path) as f:
            rate, channels = f.samplerate, f.channels
            if before_reading is not None:
                before_reading(math.ceil(f.frames * target_rate / rate))
            wave = f.read(dtype="float32", always_2d=True)  # (T, C)
    except (sf.SoundFileError, RuntimeError) as e:
        raise DataError(f"{path}: not a readable audio file ({_soundfile_reason(e)})") from None
    if wave.shape[0] == 0:
        raise DataError(f"{path}: empty audio (0 samples)")
    promised = _wav_promised_frames(path)
    if promised is not None and promised > wave.shape[0]:
        # libsndfile quietly reads what there is: a cut download or copy would pass as a short clip
        raise DataError(f"{path}: truncated: its header promises {promised} samples, the file holds {wave.shape[0]}")
    if channels > 1:
        if mono == "error":
            raise DataError(f"{path}: {channels} channels, expected mono; convert it (sox FILE -c 1 MONO.wav)")
        wave = wave.mean(axis=1, keepdims=True)
    wave = np.ascontiguousarray(wave[:, 0])  # (T,)
    if not np.isfinite(wave).all():
        raise DataError(f"{path}: audio holds NaN or infinite samples")
    if rate != target_rate:
        wave = optional_import("soxr", "resampling audio").resample(wave, rate, target_rate, quality=RESAMPLE_QUALITY)
    return wave.astype(np.float32, copy=False)


def _wav_promised_frames(path: Path) -> int | None:
    """The samples a RIFF/WAVE header's ``data`` chunk promises (per channel), or None for another
    format, a header that does not say (streaming writers put 0 or 0xFFFFFFFF there) or one we
    cannot walk — libsndfile has read the file by then and judges those itself."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        block_align = None
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return None
            kind, size = chunk[:4], int.from_bytes(chunk[4:], "little")
            if kind == b"fmt ":
                fmt = f.read(size)
                block_align = int.from_bytes(fmt[12:14], "little") if len(fmt) >= 14 else None
                f.seek(size % 2, 1)  # chunks are padded to an even size
            elif kind == b"data":
                if not block_align or size in (0, 0xFFFFFFFF):
                    return None
                return size // block_align
            else:
                f.seek(size + size % 2, 1)


def _soundfile_reason(error: Exception) -> str:
    """libsndfile's own words, without the 'Error opening <path>:' prefix soundfile adds."""
    reason = getattr(error, "error_string", "") or str(error)
    reason = reason.strip().rstrip(".")
    return reason or "format not recognised"


# --------------------------------------------------------------------------------------------
# Mel filterbank and log-mel features


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """Slaney's mel scale (librosa's default, ``htk=False``): linear below 1 kHz, log above.

    mel = 3 f / 200 for f < 1000 Hz; mel = 15 + 27 ln(f / 1000) / ln 6.4 above.
    """
    hz = np.asarray(hz, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    linear = hz / f_sp
    log = min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep
    return np.where(hz >= min_log_hz, log, linear)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """The inverse of :func:`hz_to_mel`."""
    mel = np.asarray(mel, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, math.log(6.4) / 27.0
    linear = mel * f_sp
    log = min_log_hz * np.exp(logstep * (np.maximum(mel, min_log_mel) - min_log_mel))
    return np.where(mel >= min_log_mel, log, linear)


@dataclass(frozen=True)
class MelFilterbank:
    """Triangular filters evenly spaced on the Slaney mel scale, each of unit area in Hz
    (Slaney normalisation: filter i is scaled by 2 / (f[i+2] - f[i])). Equal to
    ``librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)``.

    ``weights``: ``(n_mels, n_fft // 2 + 1)``; ``apply(power)`` maps a power spectrogram
    ``(..., frames, n_fft // 2 + 1)`` to mel energies ``(..., frames, n_mels)``.

    ``warp`` ≠ 1 stretches the spectrum by that factor before the filters read it (vocal tract
    length perturbation, see :func:`vtlp_frequencies`): a tone at f lands in the band a tone at
    ``warp`` · f would without it.
    """

    sample_rate: int
    n_fft: int
    n_mels: int
    fmin: float = 0.0
    fmax: float | None = None
    warp: float = 1.0

    def __post_init__(self) -> None:
        nyquist = self.sample_rate / 2
        fmax = nyquist if self.fmax is None else self.fmax
        if self.sample_rate <= 0 or self.n_fft <= 0 or self.n_mels <= 0:
            raise ValueError(
                f"sample_rate, n_fft and n_mels must be positive, got {self.sample_rate}, {self.n_fft}, {self.n_mels}"
            )
        if not 0 <= self.fmin < fmax <= nyquist:
            raise ValueError(f"need 0 <= fmin < fmax <= {nyquist:g} Hz (Nyquist), got fmin={self.fmin}, fmax={fmax}")
        empty = np.flatnonzero(self.weights.max(axis=1) == 0)
        if empty.size:
            raise ValueError(
                f"{self.n_mels} mel bands are too many for n_fft={self.n_fft} at {self.sample_rate} Hz: "
                f"bands {empty.tolist()} cover no FFT bin; use fewer mels or a larger n_fft"
            )

    @property
    def band_edges_hz(self) -> np.ndarray:
        """``(n_mels + 2,)`` Hz: filter i rises from edge i, peaks at edge i+1, ends at edge i+2."""
        fmax = self.sample_rate / 2 if self.fmax is None else self.fmax
        return mel_to_hz(np.linspace(hz_to_mel(self.fmin), hz_to_mel(fmax), self.n_mels + 2))

    @property
    def center_frequencies(self) -> np.ndarray:
        """``(n_mels,)`` Hz: where each filter peaks."""
        return self.band_edges_hz[1:-1]

    @property
    def weights(self) -> np.ndarray:
        """``(n_mels, n_fft // 2 + 1)`` float64 filter weights."""
        return _mel_weights(self.sample_rate, self.n_fft, self.n_mels, self.fmin, self.fmax, self.warp)

    def matrix(self) -> Tensor:
        """The weights as a float32 tensor ``(n_mels, n_fft // 2 + 1)``."""
        return torch.from_numpy(self.weights.astype(np.float32))

    def apply(self, power: Tensor) -> Tensor:
        """``(..., frames, n_fft // 2 + 1)`` power spectrogram → ``(..., frames, n_mels)``."""
        if power.shape[-1] != self.n_fft // 2 + 1:
            raise ValueError(f"expected {self.n_fft // 2 + 1} frequency bins last, got shape {tuple(power.shape)}")
        return power @ self.matrix().to(power.dtype).T


def vtlp_frequencies(hz: np.ndarray, factor: float, nyquist: float, boundary: float = 0.8) -> np.ndarray:
    """Vocal tract length perturbation's frequency map (Jaitly & Hinton 2013): f → factor · f up to
    a knee, then the straight line that takes the knee to the Nyquist frequency, so the map is
    continuous, increasing, and keeps 0 and Nyquist where they are. The knee sits at
    ``boundary`` · Nyquist · min(factor, 1) / factor.
    """
    knee = boundary * nyquist * min(factor, 1.0) / factor
    upper = nyquist - (nyquist - factor * knee) / (nyquist - knee) * (nyquist - hz)
    return np.where(hz <= knee, factor * hz, upper)


@cache
def _mel_weights(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None, warp: float = 1.0
) -> np.ndarray:
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_hz = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)  # (F,)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))  # (n_mels + 2,)
    if warp != 1.0:
        # Filters placed at the inverse map read the stretched spectrum: band i now collects the
        # energy that sits at f with warp · f = its usual place.
        edges = vtlp_frequencies(edges, 1.0 / warp, sample_rate / 2)
    widths = np.diff(edges)  # (n_mels + 1,)
    ramps = edges[:, None] - fft_hz[None, :]  # (n_mels + 2, F)
    rising = -ramps[:-2] / widths[:-1, None]  # (n_mels, F): 0 at the lower edge, 1 at the centre
    falling = ramps[2:] / widths[1:, None]  # (n_mels, F): 1 at the centre, 0 at the upper edge
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, F)
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]  # Slaney: unit area per filter
    weights.setflags(write=False)
    return weights


def log_mel(
    wave: np.ndarray | Tensor,
    sample_rate: int,
    n_fft: int = DEFAULT_N_FFT,
    hop: int = DEFAULT_HOP,
    win: int = DEFAULT_WIN,
    n_mels: int = DEFAULT_N_MELS,
    warp: float = 1.0,
) -> Tensor:
    """Log-mel energies of a mono waveform: ``(T,)`` → float32 ``(1 + T // hop, n_mels)``.

    STFT with a periodic Hann window of ``win`` samples zero-padded to ``n_fft``, frames centred
    on multiples of ``hop`` (``center=True``, the signal zero-padded by ``n_fft // 2`` at both
    ends), power spectrum |X|², the :class:`MelFilterbank`, then ``log(x + 1e-6)``. The same
    numbers as ``librosa.feature.melspectrogram(power=2, pad_mode="constant")`` followed by
    that log. Defaults suit 8 kHz speech: 25 ms windows every 10 ms, 40 bands. ``warp`` ≠ 1
    stretches the spectrum first (vocal tract length perturbation; see :class:`MelFilterbank`).
    """
    if not 0 < win <= n_fft:
        raise ValueError(f"need 0 < win <= n_fft, got win={win}, n_fft={n_fft}")
    if hop <= 0:
        raise ValueError(f"hop must be positive, got {hop}")
    x = torch.as_tensor(wave, dtype=torch.float32)
    if x.ndim != 1 or x.numel() == 0:
        raise ValueError(f"log_mel takes one non-empty channel (T,), got shape {tuple(x.shape)}")
    spec = torch.stft(
        x,
        n_fft=n_fft,
        hop_length=hop,
        win_length=win,
        window=torch.hann_window(win),
        center=True,
        pad_mode="constant",
        return_complex=True,
    )  # (F, frames)
    power = spec.abs().square().T  # (frames, F)
    mel = MelFilterbank(sample_rate, n_fft, n_mels, warp=warp).apply(power)  # (frames, n_mels)
    return torch.log(mel + LOG_FLOOR)


def normalize(features: Tensor, eps: float = 1e-5, per_bin_variance: bool = True, per_bin_mean: bool = True) -> Tensor:
    """Per-utterance normalisation: ``(frames, n_mels)`` → same.

    Each mel bin's mean over the utterance is subtracted (cepstral mean normalisation), which
    removes the recording's overall level and a constant channel colouring. Then, by default,
    each bin is divided by its own standard deviation (a constant bin becomes 0); with
    ``per_bin_variance=False`` the whole utterance is divided by one standard deviation instead,
    which keeps how much each band moves relative to the others (a bin that holds only the noise
    floor stays small rather than being scaled up to the size of the speech bands).

    With ``per_bin_mean=False`` one mean over all bins and frames is subtracted instead: only the
    level goes, and the utterance's average spectrum stays. On a one-word clip that average is
    mostly the vowel, which per-bin subtraction flattens; but it also holds the recording's
    channel colouring, and on FSDD's unseen speakers keeping that cost more than it gained
    (docs/RESULTS.md).
    """
    if features.ndim != 2:
        raise ValueError(f"normalize takes (frames, n_mels), got shape {tuple(features.shape)}")
    mean = features.mean(dim=0, keepdim=True) if per_bin_mean else features.mean()  # (1, n_mels) or ()
    centred = features - mean  # (frames, n_mels)
    # (1, n_mels) per bin, or one number for the whole utterance
    var = centred.square().mean(dim=0, keepdim=True) if per_bin_variance else centred.square().mean()
    return centred / torch.sqrt(var + eps)


@cache
def _dct_basis(n: int, dtype: torch.dtype) -> Tensor:
    """The orthonormal DCT-II as an ``(n, n)`` matrix: ``cepstra = matrix @ log_spectrum``; the
    transform MFCCs use (scipy's ``dct(type=2, norm="ortho")``). Cached per size and dtype: it is
    applied to every clip, augmented copies included."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    matrix = np.sqrt(2.0 / n) * np.cos(np.pi * k * (2 * i + 1) / (2 * n))  # (n, n)
    matrix[0] /= np.sqrt(2.0)
    return torch.tensor(matrix, dtype=dtype)


def cepstra(features: Tensor, n_cepstra: int) -> Tensor:
    """The first ``n_cepstra`` cepstral coefficients of each frame: ``(frames, n_mels)`` →
    ``(frames, n_cepstra)`` (MFCCs, when ``features`` are log-mel energies)."""
    n_mels = features.shape[-1]
    if not 1 <= n_cepstra <= n_mels:
        raise ValueError(f"n_cepstra must be in 1..{n_mels} (the number of mel bands), got {n_cepstra}")
    return features @ _dct_basis(n_mels, features.dtype)[:n_cepstra].T  # (frames, K)


def smooth_spectrum(features: Tensor, n_cepstra: int) -> Tensor:
    """Log-mel frames with all but their first ``n_cepstra`` cepstral coefficients removed:
    ``(frames, n_mels)`` → same shape, a smooth envelope across bands.

    Why: the fine ripple across the low bands is the voice's pitch harmonics, a trait of the
    speaker rather than of the word; the envelope (formants) is what carries the word. Keeping
    the bands (rather than the cepstra themselves, as MFCCs do) keeps the frequency axis the
    convolutions slide along. ``n_cepstra == n_mels`` returns the input unchanged.
    """
    basis = _dct_basis(features.shape[-1], features.dtype)[:n_cepstra]  # (K, M)
    return cepstra(features, n_cepstra) @ basis  # (frames, M): back to bands, ripple removed


# --------------------------------------------------------------------------------------------
# SpecAugment


@dataclass(frozen=True)
class SpecAugmentMasks:
    """Where SpecAugment masks: ``(start, width)`` pairs along mel bins and along frames."""

    freq: tuple[tuple[int, int], ...]
    time: tuple[tuple[int, int], ...]


def draw_masks(
    n_frames: int,
    n_mels: int,
    *,
    n_freq_masks: int,
    max_freq_width: int,
    n_time_masks: int,
    max_time_width: int,
    generator: torch.Generator,
) -> SpecAugmentMasks:
    """Draw SpecAugment masks (Park et al. 2019, §2): each width uniform in ``[0, max]``
    (clipped to the axis length), its start uniform over the positions where it fits."""
    for name, value in [
        ("n_freq_masks", n_freq_masks),
        ("max_freq_width", max_freq_width),
        ("n_time_masks", n_time_masks),
        ("max_time_width", max_time_width),
    ]:
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    freq = tuple(_draw_span(n_mels, max_freq_width, generator) for _ in range(n_freq_masks))
    time = tuple(_draw_span(n_frames, max_time_width, generator) for _ in range(n_time_masks))
    return SpecAugmentMasks(freq=freq, time=time)


def _draw_span(size: int, max_width: int, generator: torch.Generator) -> tuple[int, int]:
    width = min(int(torch.randint(0, max_width + 1, (), generator=generator)), size)
    start = int(torch.randint(0, size - width + 1, (), generator=generator))
    return start, width


def apply_masks(features: Tensor, masks: SpecAugmentMasks, value: float = 0.0) -> Tensor:
    """A copy of ``features`` ``(frames, n_mels)`` with the masked bands and frames set to
    ``value`` (0, the mean of normalised features)."""
    if features.ndim != 2:
        raise ValueError(f"apply_masks takes (frames, n_mels), got shape {tuple(features.shape)}")
    out = features.clone()
    for start, width in masks.freq:
        out[:, start : start + width] = value
    for start, width in masks.time:
        out[start : start + width, :] = value
    return out


def spec_augment(
    features: Tensor,
    *,
    n_freq_masks: int,
    max_freq_width: int,
    n_time_masks: int,
    max_time_width: int,
    generator: torch.Generator,
) -> Tensor:
    """SpecAugment's frequency and time masking on normalised ``(frames, n_mels)`` features.

    The same as ``apply_masks(features, draw_masks(...))``; call those two to see the masks.
    Deterministic given the generator's state.
    """
    masks = draw_masks(
        features.shape[0],
        features.shape[1],
        n_freq_masks=n_freq_masks,
        max_freq_width=max_freq_width,
        n_time_masks=n_time_masks,
        max_time_width=max_time_width,
        generator=generator,
    )
    return apply_masks(features, masks)


# --------------------------------------------------------------------------------------------
# Waveform augmentation


def add_noise(wave: np.ndarray, snr_db: float, generator: torch.Generator) -> np.ndarray:
    """``wave`` ``(T,)`` plus white Gaussian noise scaled so that the signal-to-noise ratio
    10·log10(mean(wave²) / mean(noise²)) is exactly ``snr_db`` (measured on the noise actually
    drawn, not its expectation). A silent wave gets no noise: the ratio fixes noise power at 0.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"add_noise takes one channel (T,), got shape {wave.shape}")
    if not math.isfinite(snr_db):
        raise ValueError(f"snr_db must be a finite number of dB, got {snr_db}")
    signal_power = float(np.mean(wave.astype(np.float64) ** 2)) if wave.size else 0.0
    if signal_power == 0.0:
        return wave.copy()
    noise = torch.randn(wave.shape[0], generator=generator, dtype=torch.float64).numpy()  # (T,)
    noise_power = float(np.mean(noise**2))
    scale = math.sqrt(signal_power / (noise_power * 10 ** (snr_db / 10)))
    return (wave + scale * noise).astype(np.float32)


# How far a reverberant tail is kept past the dry clip's end: until it has fallen 35 dB, the
# floor `trim_silence` uses by default (a tail kept to −60 dB would add mostly near-silence).
REVERB_TAIL_DB = 35.0


def room_impulse_response(
    rate: int, rt60_s: float, direct_to_reverberant_db: float, generator: torch.Generator
) -> np.ndarray:
    """A synthetic room impulse response ``(round(rt60_s · rate),)``: the direct sound (1 at
    sample 0), then Gaussian noise whose amplitude falls 60 dB over ``rt60_s`` (Schroeder's
    exponential decay), scaled so that direct energy / tail energy is exactly
    ``direct_to_reverberant_db``. Real rooms add early reflections; a stochastic tail is the
    usual stand-in when no recorded responses are at hand.
    """
    if not 0.0 < rt60_s <= 2.0:
        raise ValueError(f"rt60 must lie in (0, 2] seconds, got {rt60_s}")
    if not math.isfinite(direct_to_reverberant_db):
        raise ValueError(f"direct-to-reverberant ratio must be a finite number of dB, got {direct_to_reverberant_db}")
    n = max(2, round(rt60_s * rate))
    t = np.arange(n) / rate  # (n,) seconds
    tail = torch.randn(n, generator=generator, dtype=torch.float64).numpy() * 10 ** (-3.0 * t / rt60_s)
    tail[0] = 0.0
    tail *= math.sqrt(10 ** (-direct_to_reverberant_db / 10) / float(np.sum(tail**2)))
    tail[0] = 1.0  # the direct path
    return tail


def add_reverb(
    wave: np.ndarray, rate: int, rt60_s: float, direct_to_reverberant_db: float, generator: torch.Generator
) -> np.ndarray:
    """``wave`` ``(T,)`` as heard in a room: convolved with ``room_impulse_response`` and kept
    until its tail has fallen REVERB_TAIL_DB, ``(T + round(rt60_s · rate · 35/60),)``, at the
    input's RMS level. Why: a reverberant room stretches every word's ending (a speaker recorded
    in one is read with the ends of dry words as context the model never heard).
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"add_reverb takes one channel (T,), got shape {wave.shape}")
    response = room_impulse_response(rate, rt60_s, direct_to_reverberant_db, generator)  # (n,)
    if wave.size == 0:
        return wave.copy()
    size = wave.size + response.size - 1
    n_fft = 1 << (size - 1).bit_length()  # FFT convolution: a 0.5 s response is 4,000 taps at 8 kHz
    wet = np.fft.irfft(np.fft.rfft(wave, n_fft) * np.fft.rfft(response, n_fft), n_fft)[:size]
    wet = wet[: wave.size + round(rt60_s * rate * REVERB_TAIL_DB / 60)]
    dry_power, wet_power = float(np.mean(wave.astype(np.float64) ** 2)), float(np.mean(wet**2))
    if wet_power > 0:
        wet *= math.sqrt(dry_power / wet_power)
    return wet.astype(np.float32)


def trim_silence(
    wave: np.ndarray, rate: int, floor_db: float = -35.0, margin_s: float = 0.02, end_floor_db: float | None = None
) -> np.ndarray:
    """Cut leading and trailing silence: ``(T,)`` → ``(T',)``, keeping ``margin_s`` seconds of
    it either side of the first and last sample whose 10 ms RMS lies within ``floor_db`` of the
    loudest. ``end_floor_db`` sets a different floor for the end (default: ``floor_db``); a
    higher one cuts a word's fading tail, whose length depends on the room and the speaker,
    while a weak first consonant is kept. All-silent (or empty) input comes back unchanged.

    Why: recordings are cut differently by different people (FSDD's george cuts at the first
    sample of speech, lucas leaves ~0.1 s either side), and per-utterance normalisation then
    sees a different share of silence per speaker; trimming every clip the same way removes that.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"trim_silence takes one channel (T,), got shape {wave.shape}")
    if wave.size == 0:
        return wave
    frame = max(1, rate // 100)
    energy = np.sqrt(np.convolve(wave**2, np.ones(frame) / frame, mode="same"))  # (T,)
    if energy.max() == 0:
        return wave
    first = np.nonzero(energy > energy.max() * 10 ** (floor_db / 20))[0][0]
    end_floor = floor_db if end_floor_db is None else end_floor_db
    last = np.nonzero(energy > energy.max() * 10 ** (end_floor / 20))[0][-1]
    margin = round(margin_s * rate)
    return wave[max(0, first - margin) : last + margin + 1]


def speed_perturb(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play ``wave`` ``factor`` times faster (Ko et al. 2015): ``(T,)`` → ``(≈ T / factor,)``,
    every frequency multiplied by ``factor`` (pitch and tempo change together). Done by
    resampling with soxr from ``factor`` to 1 and keeping the original sample rate.
    """
    if not 0.25 <= factor <= 4.0:
        raise ValueError(f"speed factor must lie in [0.25, 4], got {factor}")
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"speed_perturb takes one channel (T,), got shape {wave.shape}")
    if factor == 1.0:
        return wave.copy()
    soxr = optional_import("soxr", "speed perturbation")
    return soxr.resample(wave, float(factor), 1.0, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


def stretch_time(features: Tensor, factor: float) -> Tensor:
    """Change an utterance's tempo but not its pitch: ``(frames, n_mels)`` → ``(round(frames /
    factor), n_mels)``, each bin linearly interpolated along time (``factor`` > 1 is faster).

    Why, beside ``speed_perturb``: speed changes pitch and tempo together, so a model can still
    tie a word to how fast one speaker says it; stretching the frames varies the tempo alone.
    """
    if not 0.25 <= factor <= 4.0:
        raise ValueError(f"tempo factor must lie in [0.25, 4], got {factor}")
    if features.ndim != 2:
        raise ValueError(f"stretch_time takes (frames, n_mels), got shape {tuple(features.shape)}")
    frames = max(1, round(features.shape[0] / factor))
    if features.shape[0] == 1:  # nothing to interpolate between
        return features.expand(frames, -1).clone()
    if frames == features.shape[0]:
        return features.clone()
    by_bin = features.T.unsqueeze(0)  # (1, n_mels, frames): interpolate works on the last axis
    stretched = torch.nn.functional.interpolate(by_bin, size=frames, mode="linear", align_corners=True)
    return stretched.squeeze(0).T.contiguous()  # (frames', n_mels)
