import math
import struct

import librosa
import numpy as np
import pytest
import scipy.fft
import scipy.signal
import soundfile as sf
import torch

from heedful.data.audio import (
    MelFilterbank,
    add_noise,
    add_reverb,
    apply_masks,
    cepstra,
    draw_masks,
    hz_to_mel,
    log_mel,
    mel_to_hz,
    normalize,
    read_audio,
    room_impulse_response,
    smooth_spectrum,
    spec_augment,
    speed_perturb,
    stretch_time,
    trim_silence,
    vtlp_frequencies,
)
from heedful.errors import DataError


def tone(freq: float, rate: int, seconds: float = 1.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def peak_hz(wave: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / rate)[spectrum.argmax()])


def slaney_mel(hz: float) -> float:
    """Slaney's mel scale written out independently of the module under test."""
    return 3 * hz / 200 if hz < 1000 else 15 + 27 * math.log(hz / 1000) / math.log(6.4)


# ---------------------------------------------------------------------------------------------
# Reading


def test_read_audio_returns_float32_mono(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, tone(440, 8000), 8000, subtype="PCM_16")
    wave = read_audio(path, 8000)
    assert wave.dtype == np.float32 and wave.shape == (8000,)
    assert peak_hz(wave, 8000) == pytest.approx(440, abs=1)


@pytest.mark.parametrize("file_rate", [16000, 44100, 11025])
def test_resampling_preserves_a_tone(tmp_path, file_rate):
    path = tmp_path / "a.flac"
    sf.write(path, tone(1000, file_rate, seconds=0.5), file_rate)
    wave = read_audio(path, 8000)
    assert abs(len(wave) - 4000) <= 1
    assert peak_hz(wave, 8000) == pytest.approx(1000, abs=2)


def test_stereo_is_mixed_on_request(tmp_path):
    path = tmp_path / "stereo.wav"
    left, right = tone(500, 8000), tone(1500, 8000, amplitude=0.25)
    sf.write(path, np.stack([left, right], axis=1), 8000, subtype="FLOAT")
    mixed = read_audio(path, 8000, mono="mix")
    np.testing.assert_allclose(mixed, (left + right) / 2, atol=1e-6)


def test_bad_arguments_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="target_rate"):
        read_audio(tmp_path / "x.wav", 0)
    with pytest.raises(ValueError, match="mono"):
        read_audio(tmp_path / "x.wav", 8000, mono="left")


def _wav_bytes(tmp_path) -> bytes:
    path = tmp_path / "good.wav"
    sf.write(path, tone(300, 8000, seconds=0.1), 8000, subtype="PCM_16")
    return path.read_bytes()


def _bad_files(tmp_path):
    good = _wav_bytes(tmp_path)
    header_only = tmp_path / "zero_samples.wav"
    sf.write(header_only, np.zeros(0, np.float32), 8000, subtype="PCM_16")
    stereo = tmp_path / "stereo.wav"
    sf.write(stereo, np.zeros((800, 2), np.float32), 8000, subtype="PCM_16")
    files = {
        "empty.wav": (b"", "empty file (0 bytes)"),
        "noise.wav": (np.random.default_rng(0).bytes(2000), "not a readable audio file ("),
        "truncated.wav": (good[:30], "not a readable audio file ("),
        "text.wav": (b"digit,speaker\n4,theo\n", "not a readable audio file ("),
    }
    cases = []
    for name, (content, problem) in files.items():
        (tmp_path / name).write_bytes(content)
        cases.append((tmp_path / name, problem))
    cases.append((header_only, "empty audio (0 samples)"))
    cases.append((stereo, "2 channels, expected mono; convert it (sox FILE -c 1 MONO.wav)"))
    cases.append((tmp_path / "missing.wav", "no such file"))
    cases.append((tmp_path, "not a file"))
    return cases


def test_bad_audio_gives_one_line_naming_the_file(tmp_path):
    for path, problem in _bad_files(tmp_path):
        with pytest.raises(DataError) as info:
            read_audio(path, 8000)
        message = str(info.value)
        assert message.startswith(f"{path}: "), message
        assert problem in message, message
        assert "\n" not in message
        assert info.value.__cause__ is None  # no chained soundfile traceback


def test_riff_header_with_a_lying_format_chunk(tmp_path):
    # A RIFF/WAVE header whose fmt chunk claims 0 channels.
    fmt = struct.pack("<HHIIHH", 1, 0, 8000, 16000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 4) + b"\0\0\0\0"
    path = tmp_path / "liar.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    with pytest.raises(DataError, match=r"liar\.wav: not a readable audio file"):
        read_audio(path, 8000)


# ---------------------------------------------------------------------------------------------
# Mel filterbank and features


def test_mel_scale_round_trips_and_matches_librosa():
    hz = np.array([0.0, 100.0, 999.0, 1000.0, 2500.0, 4000.0, 7999.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(hz)), hz, atol=1e-9)
    np.testing.assert_allclose(hz_to_mel(hz), librosa.hz_to_mel(hz), atol=1e-12)
    assert [slaney_mel(h) for h in hz] == pytest.approx(list(hz_to_mel(hz)))


@pytest.mark.parametrize(
    ("sample_rate", "n_fft", "n_mels", "fmin", "fmax"),
    [
        (8000, 256, 40, 0.0, None),
        (8000, 512, 64, 20.0, 3800.0),
        (16000, 512, 80, 0.0, None),
        (22050, 2048, 128, 0, None),
    ],
)
def test_filterbank_equals_librosa(sample_rate, n_fft, n_mels, fmin, fmax):
    ours = MelFilterbank(sample_rate, n_fft, n_mels, fmin, fmax).weights
    reference = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert ours.shape == (n_mels, n_fft // 2 + 1)
    np.testing.assert_allclose(ours, reference, atol=1e-5, rtol=0)


def test_filterbank_rejects_impossible_settings():
    with pytest.raises(ValueError, match="Nyquist"):
        MelFilterbank(8000, 256, 40, fmax=5000)
    with pytest.raises(ValueError, match="too many"):
        MelFilterbank(8000, 64, 60)


@pytest.mark.slow
def test_log_mel_matches_librosa():
    wave = np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1
    wave[:2000] *= np.linspace(0, 1, 2000, dtype=np.float32)  # something less flat than white noise
    wave += tone(700, 8000)
    ours = log_mel(wave, 8000)
    reference = librosa.feature.melspectrogram(
        y=wave,
        sr=8000,
        n_fft=256,
        hop_length=80,
        win_length=200,
        n_mels=40,
        power=2.0,
        center=True,
        pad_mode="constant",
    )  # (n_mels, frames)
    reference = np.log(reference.T + 1e-6)
    assert ours.shape == (101, 40) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-4)


def test_log_mel_shape_follows_the_hop():
    assert log_mel(np.zeros(1234, np.float32), 8000).shape == (1 + 1234 // 80, 40)
    assert log_mel(np.zeros(10, np.float32), 8000, n_mels=20).shape == (1, 20)  # shorter than a window
    assert log_mel(torch.zeros(800), 8000).shape == (11, 40)  # a tensor works too
    with pytest.raises(ValueError, match="non-empty"):
        log_mel(np.zeros(0, np.float32), 8000)


@pytest.mark.parametrize("band", [3, 12, 20, 28, 35])
def test_a_tone_peaks_in_its_mel_band(band):
    n_mels, rate = 40, 8000
    # Band centres are evenly spaced in mel between 0 and mel(Nyquist): band i peaks at step i + 1.
    centre_mel = (band + 1) * slaney_mel(rate / 2) / (n_mels + 1)
    freq = float(mel_to_hz(centre_mel))
    features = log_mel(tone(freq, rate), rate, n_mels=n_mels)  # (frames, n_mels)
    assert int(features[5:-5].mean(dim=0).argmax()) == band


def test_vtlp_map_stretches_below_the_knee_and_keeps_zero_and_nyquist():
    hz = np.linspace(0, 4000, 401)
    np.testing.assert_allclose(vtlp_frequencies(hz, 1.0, 4000), hz)
    for factor in (0.9, 1.1):
        warped = vtlp_frequencies(hz, factor, 4000)
        assert warped[0] == 0 and warped[-1] == pytest.approx(4000) and np.all(np.diff(warped) > 0)
        knee = 0.8 * 4000 * min(factor, 1) / factor
        np.testing.assert_allclose(warped[hz <= knee], factor * hz[hz <= knee])


@pytest.mark.parametrize("warp", [0.9, 1.1])
def test_a_warped_spectrum_puts_a_tone_in_the_band_of_the_stretched_tone(warp):
    rate, freq = 8000, 1200.0
    warped = log_mel(tone(freq, rate), rate, warp=warp)[5:-5].mean(dim=0)  # (n_mels,)
    stretched = log_mel(tone(warp * freq, rate), rate)[5:-5].mean(dim=0)
    plain = log_mel(tone(freq, rate), rate)[5:-5].mean(dim=0)
    assert int(warped.argmax()) == int(stretched.argmax()) != int(plain.argmax())


def test_normalize_gives_zero_mean_unit_variance_per_bin():
    features = torch.randn(50, 40) * torch.linspace(0.5, 3, 40) + torch.linspace(-10, 5, 40)
    normed = normalize(features)
    torch.testing.assert_close(normed.mean(dim=0), torch.zeros(40), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed.var(dim=0, unbiased=False), torch.ones(40), atol=1e-4, rtol=0)
    assert normalize(torch.ones(7, 3)).abs().max() == 0  # a constant bin becomes 0, not NaN
    together = normalize(features, per_bin_variance=False)
    torch.testing.assert_close(together.mean(dim=0), torch.zeros(40), atol=1e-5, rtol=0)
    torch.testing.assert_close(together.square().mean(), torch.tensor(1.0), atol=1e-4, rtol=0)
    # The bands keep their relative spread: bin 39 moved 6× as much as bin 0 and still does.
    spread = together.std(dim=0, unbiased=False)
    torch.testing.assert_close(
        spread / spread[0], features.std(dim=0, unbiased=False) / features[:, 0].std(unbiased=False)
    )


def test_normalize_with_one_mean_keeps_the_average_spectrum():
    features = torch.randn(50, 40) + torch.linspace(-10, 5, 40)  # a tilted average spectrum
    level_only = normalize(features, per_bin_variance=False, per_bin_mean=False)
    torch.testing.assert_close(level_only.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(level_only.square().mean(), torch.tensor(1.0), atol=1e-4, rtol=0)
    # Only the level and one scale went: the tilt across bins is still there, up to that scale.
    expected = (features - features.mean()) / (features - features.mean()).square().mean().sqrt()
    torch.testing.assert_close(level_only, expected, atol=1e-5, rtol=0)
    assert level_only.mean(dim=0)[-1] - level_only.mean(dim=0)[0] > 1.5
    # Adding a constant level changes nothing; per-bin means would also cancel a tilt, this does not.
    torch.testing.assert_close(normalize(features + 7, per_bin_variance=False, per_bin_mean=False), level_only)


# ---------------------------------------------------------------------------------------------
# Cepstral smoothing


def test_cepstra_are_scipys_orthonormal_dct():
    features = torch.randn(9, 40)
    reference = scipy.fft.dct(features.numpy(), type=2, norm="ortho", axis=-1)[:, :13]
    np.testing.assert_allclose(cepstra(features, 13).numpy(), reference, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="1..40"):
        cepstra(features, 41)


def test_smoothing_keeps_the_envelope_and_removes_the_ripple():
    bands = torch.arange(40, dtype=torch.float64)
    envelope = 3 * torch.cos(torch.pi * 2 * (2 * bands + 1) / 80) - torch.cos(torch.pi * 5 * (2 * bands + 1) / 80)
    ripple = 0.7 * torch.cos(torch.pi * 30 * (2 * bands + 1) / 80)  # DCT basis 30: a fine comb across bands
    smoothed = smooth_spectrum((envelope + ripple)[None], 13)[0]
    torch.testing.assert_close(smoothed, envelope, atol=1e-9, rtol=0)
    features = torch.randn(5, 40)
    torch.testing.assert_close(smooth_spectrum(features, 40), features, atol=1e-5, rtol=0)
    torch.testing.assert_close(smooth_spectrum(features, 1), features.mean(-1, keepdim=True).expand(5, 40))


def vowel(f0: float, rate: int = 8000) -> np.ndarray:
    """Half a second of an /a/-like vowel: a pulse train at pitch ``f0`` through three formant
    resonators (700, 1200, 2600 Hz)."""
    wave = np.zeros(rate // 2)
    wave[np.arange(0, rate // 2, rate / f0).astype(int)] = 1.0
    for freq, bandwidth in ((700, 100), (1200, 120), (2600, 150)):
        radius, angle = np.exp(-np.pi * bandwidth / rate), 2 * np.pi * freq / rate
        wave = scipy.signal.lfilter([1.0], [1.0, -2 * radius * np.cos(angle), radius**2], wave)
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def test_smoothing_brings_two_pitches_of_one_vowel_together():
    def mean_frame(f0: float, n_cepstra: int) -> torch.Tensor:
        frame = smooth_spectrum(log_mel(vowel(f0), 8000), n_cepstra)[10:-10].mean(dim=0)  # (40,)
        return frame - frame.mean()

    raw = (mean_frame(100, 40) - mean_frame(150, 40)).norm()
    smoothed = (mean_frame(100, 13) - mean_frame(150, 13)).norm()
    assert smoothed < 0.4 * raw  # 0.86 against 3.1: the harmonics were most of the difference


# ---------------------------------------------------------------------------------------------
# SpecAugment


MASKS = dict(n_freq_masks=2, max_freq_width=8, n_time_masks=2, max_time_width=10)


def test_spec_augment_masks_the_promised_widths():
    features = torch.randn(100, 40) + 5  # no zeros of its own
    seen_widths: set[int] = set()
    for seed in range(200):
        masks = draw_masks(100, 40, **MASKS, generator=torch.Generator().manual_seed(seed))
        assert len(masks.freq) == 2 and len(masks.time) == 2
        for (start, width), (size, most) in [(m, (40, 8)) for m in masks.freq] + [(m, (100, 10)) for m in masks.time]:
            assert 0 <= width <= most and 0 <= start <= size - width
        seen_widths.update(w for _, w in masks.freq)
        out = apply_masks(features, masks)
        expected = torch.ones(100, 40, dtype=torch.bool)  # True = kept
        for start, width in masks.freq:
            expected[:, start : start + width] = False
        for start, width in masks.time:
            expected[start : start + width] = False
        assert torch.equal(out == 0, ~expected)
        assert torch.equal(out[expected], features[expected])
    assert seen_widths == set(range(9))  # widths are drawn from the whole of [0, max]


def test_spec_augment_is_deterministic_per_generator():
    features = torch.randn(80, 40)
    original = features.clone()
    a = spec_augment(features, **MASKS, generator=torch.Generator().manual_seed(3))
    b = spec_augment(features, **MASKS, generator=torch.Generator().manual_seed(3))
    c = spec_augment(features, **MASKS, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    masks = draw_masks(80, 40, **MASKS, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, apply_masks(features, masks))
    assert torch.equal(features, original)  # the input is left alone


def test_spec_augment_handles_short_inputs_and_bad_counts():
    masks = draw_masks(3, 40, **{**MASKS, "max_time_width": 50}, generator=torch.Generator().manual_seed(0))
    assert all(start + width <= 3 for start, width in masks.time)
    with pytest.raises(ValueError, match="max_freq_width"):
        draw_masks(10, 40, **{**MASKS, "max_freq_width": -1}, generator=torch.Generator())


# ---------------------------------------------------------------------------------------------
# Waveform augmentation


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 30.0])
def test_add_noise_hits_the_snr(snr_db):
    wave = tone(440, 8000) + 0.1 * tone(1300, 8000)
    noisy = add_noise(wave, snr_db, torch.Generator().manual_seed(0))
    noise = noisy.astype(np.float64) - wave
    measured = 10 * math.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=0.1)
    assert noisy.dtype == np.float32 and noisy.shape == wave.shape


def test_add_noise_is_seeded_and_leaves_silence_alone():
    wave = tone(440, 8000)
    a = add_noise(wave, 10, torch.Generator().manual_seed(1))
    b = add_noise(wave, 10, torch.Generator().manual_seed(1))
    c = add_noise(wave, 10, torch.Generator().manual_seed(2))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert not add_noise(np.zeros(100, np.float32), 10, torch.Generator()).any()


@pytest.mark.parametrize(("rt60", "drr_db"), [(0.2, 0.0), (0.5, 6.0)])
def test_room_impulse_response_decays_60_db_over_rt60(rt60, drr_db):
    response = room_impulse_response(8000, rt60, drr_db, torch.Generator().manual_seed(0))
    assert response.shape == (round(rt60 * 8000),) and response[0] == 1.0
    assert 10 * math.log10(1.0 / np.sum(response[1:] ** 2)) == pytest.approx(drr_db, abs=1e-9)
    # Energy per 10 ms window, in dB, against time: a straight line falling 60 dB per rt60.
    windows = response[1 : 1 + (len(response) - 1) // 80 * 80].reshape(-1, 80)
    level_db = 10 * np.log10(np.sum(windows**2, axis=1))
    slope_db_per_s = np.polyfit(np.arange(len(level_db)) * 0.01, level_db, 1)[0]
    assert slope_db_per_s * rt60 == pytest.approx(-60, rel=0.1)
    with pytest.raises(ValueError, match="rt60"):
        room_impulse_response(8000, 0.0, 0.0, torch.Generator())


def test_add_reverb_is_the_convolution_kept_to_the_35_db_tail():
    wave = tone(440, 8000, seconds=0.3) * np.hanning(2400).astype(np.float32)
    wet = add_reverb(wave, 8000, 0.3, 3.0, torch.Generator().manual_seed(4))
    response = room_impulse_response(8000, 0.3, 3.0, torch.Generator().manual_seed(4))
    reference = scipy.signal.fftconvolve(wave.astype(np.float64), response)[: len(wave) + round(0.3 * 8000 * 35 / 60)]
    reference *= math.sqrt(np.mean(wave.astype(np.float64) ** 2) / np.mean(reference**2))
    assert wet.dtype == np.float32 and wet.shape == reference.shape
    np.testing.assert_allclose(wet, reference, atol=1e-5)
    again = add_reverb(wave, 8000, 0.3, 3.0, torch.Generator().manual_seed(4))
    other = add_reverb(wave, 8000, 0.3, 3.0, torch.Generator().manual_seed(5))
    assert np.array_equal(wet, again) and not np.array_equal(wet, other)


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_scales_duration_and_pitch(factor):
    wave = tone(1000, 8000)
    fast = speed_perturb(wave, factor)
    assert abs(len(fast) - len(wave) / factor) <= 1
    assert peak_hz(fast, 8000) == pytest.approx(1000 * factor, abs=3)
    assert np.array_equal(speed_perturb(wave, 1.0), wave)
    with pytest.raises(ValueError, match="speed factor"):
        speed_perturb(wave, 0)


@pytest.mark.parametrize("factor", [0.8, 1.25])
def test_stretch_time_changes_tempo_not_pitch(factor):
    ramp = torch.arange(101.0)[:, None] * torch.tensor([1.0, -2.0])  # (101, 2): bins that rise and fall
    stretched = stretch_time(ramp, factor)
    assert stretched.shape == (round(101 / factor), 2)
    # Linear in time stays linear: the same start and end, evenly spaced in between.
    expected = torch.linspace(0, 100, stretched.shape[0])[:, None] * torch.tensor([1.0, -2.0])
    torch.testing.assert_close(stretched, expected)
    # On real features, the peak mel bin of a tone stays where it was (speed_perturb would move it).
    features = log_mel(tone(1000, 8000), 8000)  # (frames, 40)
    faster = stretch_time(features, factor)
    assert int(faster.mean(0).argmax()) == int(features.mean(0).argmax())
    assert torch.equal(stretch_time(features, 1.0), features)
    assert stretch_time(features[:1], 0.5).shape == (2, 40)
    with pytest.raises(ValueError, match="tempo factor"):
        stretch_time(features, 5)


@pytest.mark.parametrize("margin_s", [0.0, 0.02])
def test_trim_silence_keeps_the_sound_and_the_margin(margin_s):
    rate = 8000
    sound = tone(500, rate, seconds=0.2)  # (1600,)
    quiet = 1e-4 * np.random.default_rng(0).standard_normal(rate).astype(np.float32)  # -67 dB: silence
    wave = np.concatenate([quiet[:2400], sound, quiet[2400:5600]])
    trimmed = trim_silence(wave, rate, floor_db=-35, margin_s=margin_s)
    start = np.flatnonzero(np.isin(wave, trimmed[: len(trimmed) // 2]))[0]  # where the kept part began
    # The 10 ms RMS window reaches the tone up to half a window (40 samples) before it starts.
    expected_start = 2400 - round(margin_s * rate)
    assert expected_start - 41 <= start <= expected_start
    assert 1600 + 2 * round(margin_s * rate) <= len(trimmed) <= 1600 + 2 * round(margin_s * rate) + 82
    assert np.array_equal(trim_silence(np.zeros(800, np.float32), rate), np.zeros(800, np.float32))
    assert trim_silence(np.zeros(0, np.float32), rate).shape == (0,)


def test_trim_silence_end_floor_cuts_a_fading_tail_but_not_a_weak_onset():
    rate = 8000
    weak_onset = 0.03 * tone(3000, rate, seconds=0.05)  # −30 dB: a faint first consonant (400,)
    vowel = tone(500, rate, seconds=0.2)  # (1600,)
    tail = 0.03 * tone(500, rate, seconds=0.1)  # −30 dB: the vowel fading out (800,)
    silence = np.zeros(800, np.float32)
    wave = np.concatenate([silence, weak_onset, vowel, tail, silence])
    both = trim_silence(wave, rate, floor_db=-35, margin_s=0)
    assert abs(len(both) - (400 + 1600 + 800)) <= 82  # everything above −35 dB stays
    end_cut = trim_silence(wave, rate, floor_db=-35, margin_s=0, end_floor_db=-20)
    assert np.array_equal(end_cut[:400], both[:400])  # the same start, weak onset and all
    # The −30 dB tail is gone (give or take the 10 ms RMS window's reach at either end).
    assert abs(len(end_cut) - (400 + 1600)) <= 82 and len(both) - len(end_cut) >= 800 - 41


def _wav_with_list_chunk(samples: np.ndarray, cut: int = 0) -> bytes:
    """A 16-bit mono 8 kHz WAV with an odd-sized LIST chunk (padded to even) before its data,
    the last ``cut`` bytes of the data missing."""
    fmt = struct.pack("<HHIIHH", 1, 1, 8000, 16000, 2, 16)
    data = samples.astype("<i2").tobytes()
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"LIST" + struct.pack("<I", 3) + b"abc\0"
    chunks += b"data" + struct.pack("<I", len(data)) + data[: len(data) - cut]
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def test_a_wav_whose_header_promises_more_samples_than_it_holds_is_refused(tmp_path):
    samples = (np.sin(np.arange(1000) / 5) * 10_000).astype(np.int16)
    whole, cut = tmp_path / "whole.wav", tmp_path / "cut.wav"
    whole.write_bytes(_wav_with_list_chunk(samples))
    cut.write_bytes(_wav_with_list_chunk(samples, cut=600))
    np.testing.assert_allclose(read_audio(whole, 8000), samples / 32768, atol=1e-6)  # chunks walked past LIST
    with pytest.raises(DataError, match=r"cut\.wav: truncated: its header promises 1000 samples, the file holds 700"):
        read_audio(cut, 8000)


def test_a_header_claiming_hours_is_refused_before_a_sample_is_read(tmp_path, monkeypatch):
    """A 40 KB WAV whose header says 1 Hz is 20,000 s at 8 kHz: transcribe read and resampled it
    (4 GB, 19 s) before saying it was too long. The length check now runs on the header."""
    from heedful.errors import DataError
    from heedful.runs import load_config
    from heedful.tasks import get_task
    from tests.conftest import ROOT

    path = tmp_path / "one-hertz.wav"
    sf.write(path, np.zeros(20_000, dtype=np.float32), 1, subtype="PCM_16")
    seen = []
    read_audio(path, 1, before_reading=seen.append)
    assert seen == [20_000]  # the header's length, in samples at the target rate
    monkeypatch.setattr(sf.SoundFile, "read", lambda *a, **k: pytest.fail("read the samples"))
    for trim in ("null", "-40"):  # with trimming too: beyond TRIM_SLACK times the limit
        cfg = load_config(ROOT / "configs" / "speech_digits.yaml", [f"data.trim_db={trim}", "device=cpu"])
        with pytest.raises(DataError, match=r"one-hertz.wav: 20000.0 s of audio; this model hears at most"):
            get_task("speech")(cfg)._read(path)
