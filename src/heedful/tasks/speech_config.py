"""The speech task's config: the FSDD data, augmentation, the model and CTC decoding.

Kept apart from tasks/speech.py so that the task module reads as the task itself; every field is
documented where it is declared."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from heedful.config import RunConfig, Section
from heedful.models.speech import SpeechConfig


class SpeechData(Section):
    root: Path = Field(Path("../shared/data/fsdd"), description="FSDD folder (or its recordings/ folder)")
    mode: Literal["digits", "strings"] = Field(
        "digits",
        description="digits: one isolated digit per clip, classified (model.head: classify); strings: several "
        "clips of one speaker joined with pauses, transcribed (model.head: ctc)",
    )
    split: str = Field("standard", description="standard | speaker:<name> (leave that speaker out)")
    val_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of the training recordings held out for validation (per digit and speaker)"
    )
    sample_rate: int = Field(8000, ge=1000, description="Hz: every clip is resampled to this rate before its features")
    n_train_strings: int = Field(3000, ge=1, description="strings: digit strings built from the training recordings")
    n_val_strings: int = Field(200, ge=1, description="strings: digit strings built from the validation recordings")
    n_test_strings: int = Field(500, ge=1, description="strings: digit strings built from the test recordings")
    min_digits: int = Field(2, ge=1, description="strings: fewest digits in a string (lengths drawn uniformly)")
    max_digits: int = Field(7, ge=1, description="strings: most digits in a string")
    string_noise_snr_db: float | None = Field(None, description="white noise in built strings")
    test_noise_snr_db: float | None = Field(None, description="add white noise to val/test audio (robustness)")
    trim_db: float | None = Field(
        None,
        lt=0,
        description="digits mode: cut each clip's leading and trailing audio quieter than this many dB "
        "below its loudest 10 ms (train, val, test and predict alike), so every speaker's clips are cut the same "
        "way; null = off",
    )
    trim_end_db: float | None = Field(
        None,
        lt=0,
        description="with trim_db: a different floor for the clip's end (e.g. -20 cuts a word's fading tail but "
        "keeps a weak first consonant); null = trim_db's",
    )
    trim_margin: float = Field(0.02, ge=0, description="seconds of the cut silence kept either side")
    extra_train_roots: list[Path] = Field(
        [],
        description="folders of extra {digit}_{speaker}_{index}.wav recordings (e.g. synthetic voices) added to "
        "the training part only, never to validation or test; their speakers must not be FSDD's",
    )

    @model_validator(mode="after")
    def _trim_needs_clips(self) -> SpeechData:
        if self.trim_db is not None and self.mode == "strings":
            raise ValueError("trim_db works on single clips (mode 'digits'); strings set their own pauses")
        if self.trim_end_db is not None and self.trim_db is None:
            raise ValueError("trim_end_db needs trim_db (the floor for the clip's start)")
        return self

    @field_validator("split")
    @classmethod
    def _check_split(cls, value: str) -> str:
        if value != "standard" and not value.startswith("speaker:"):
            raise ValueError("must be 'standard' or 'speaker:<name>'")
        return value


class AugmentConfig(Section):
    speed: tuple[float, float] | None = Field(None, description="speed perturbation factor range, e.g. [0.9, 1.1]")
    noise_snr_db: tuple[float, float] | None = Field(None, description="white noise at an SNR drawn from this range")
    noise_prob: float = Field(0.5, ge=0, le=1, description="share of training utterances that get noise")
    vtlp: tuple[float, float] | None = Field(
        None, description="vocal tract length perturbation: stretch each spectrum by a factor from this range"
    )
    edge_crop: float = Field(
        0.0,
        ge=0,
        description="cut up to this many seconds (uniform, each end drawn apart) off the start and the "
        "end of each training clip, so that words cut tight at their edges (weak first consonants lost) are no "
        "surprise; 0 = off",
    )
    tempo: tuple[float, float] | None = Field(
        None,
        description="stretch each training utterance's frames in time by a factor from this range (tempo without "
        "pitch; >1 is faster), e.g. [0.8, 1.25]",
    )
    reverb: tuple[float, float] | None = Field(
        None,
        description="convolve training utterances with a synthetic room response whose reverberation time "
        "(RT60, seconds) is drawn from this range, e.g. [0.1, 0.5]",
    )
    reverb_drr_db: tuple[float, float] = Field(
        (0.0, 10.0), description="direct-to-reverberant energy ratio (dB) range of those rooms"
    )
    reverb_prob: float = Field(0.5, ge=0, le=1, description="share of training utterances that get reverb")
    spec_augment: bool = Field(
        True,
        description="SpecAugment: set random mel bands and frames of each training utterance's features to 0 "
        "(their mean)",
    )
    n_freq_masks: int = Field(2, ge=0, description="SpecAugment: frequency masks per training utterance")
    max_freq_width: int = Field(6, ge=0, description="SpecAugment: widest frequency mask, in mel bands")
    n_time_masks: int = Field(2, ge=0, description="SpecAugment: time masks per training utterance")
    max_time_width: int = Field(
        8, ge=0, description="SpecAugment: widest time mask, in frames (one per 80 samples: 10 ms at 8 kHz)"
    )

    @field_validator("speed", "tempo")
    @classmethod
    def _check_factor_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0.25 <= value[0] <= value[1] <= 4.0:
            raise ValueError("must be [low, high] with 0.25 <= low <= high <= 4")
        return value

    @field_validator("reverb")
    @classmethod
    def _check_rt60_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 < value[0] <= value[1] <= 2.0:
            raise ValueError("must be [low, high] seconds with 0 < low <= high <= 2")
        return value


class SpeechDecode(Section):
    beam_size: int = Field(1, ge=1, description="CTC: 1 = greedy, more = prefix beam search")
    explain_layer: int = Field(-1, description="encoder layer whose self-attention --show-attention draws")
    explain_head: int | None = Field(None, description="one head, or null for the mean over heads")


class SpeechTaskConfig(RunConfig):
    task: Literal["speech"] = Field("speech", description="which task reads the rest of the config")
    data: SpeechData = SpeechData()
    augment: AugmentConfig = AugmentConfig()
    model: SpeechConfig = SpeechConfig()
    decode: SpeechDecode = SpeechDecode()

    @model_validator(mode="after")
    def _explained_layer_and_head_exist(self) -> SpeechTaskConfig:
        # Taken modulo the depth, layer 10 of a 3-layer encoder would silently show layer 1.
        layers, heads, decode = self.model.n_layers, self.model.n_heads, self.decode
        if not -layers <= decode.explain_layer < layers:
            raise ValueError(
                f"decode.explain_layer={decode.explain_layer}: the encoder has {layers} layers "
                f"(0 to {layers - 1}, or -{layers} to -1 counting from the top)"
            )
        if decode.explain_head is not None and not 0 <= decode.explain_head < heads:
            raise ValueError(
                f"decode.explain_head={decode.explain_head}: the model has heads 0 to {heads - 1} (null: their mean)"
            )
        return self

    @model_validator(mode="after")
    def _edge_crop_needs_clips(self) -> SpeechTaskConfig:
        if self.augment.edge_crop > 0 and self.data.mode == "strings":
            raise ValueError("augment.edge_crop works on single clips (mode 'digits'); it could cut a string's digits")
        return self
