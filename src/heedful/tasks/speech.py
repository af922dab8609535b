"""Speech recognition on spoken digits: a CNN front end with self-attention over frames.

Two modes (``data.mode``), one task:

* ``digits`` — isolated digits, 10-way classification with a pooled head. Splits: ``standard``
  (the dataset's own: takes 0–4 of every speaker and digit are the test set) or
  ``speaker:<name>`` (that speaker's 500 recordings are the test set: speaker-independent).
* ``strings`` — 2–7 recordings of one speaker joined with random pauses (optionally noisy),
  transcribed with a CTC head; scored as digit error rate (WER over digits, via jiwer) and
  sentence accuracy. Test strings are built only from test-split recordings.

A validation set (``data.val_fraction`` of the training recordings, stratified by digit and
speaker) selects the model; the test set is only scored by ``heedful evaluate``. Extra voices
(``data.extra_train_roots``, e.g. synthetic speakers) join the training part only.

data (FSDD wavs → log-mel, per-utterance normalised) → model (:mod:`heedful.models.speech`) →
loss (cross-entropy | CTC) → metrics → predict (audio files → digits + confidence) → explain
(frame self-attention over the spectrogram).

Beside this module: the splits in data/fsdd.py, utterances, their batches and augmentation in
data/utterances.py, CTC transcription with a confidence in decode/ctc.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heedful.data.audio import (
    DEFAULT_HOP,
    DEFAULT_WIN,
    add_noise,
    log_mel,
    normalize,
    read_audio,
    smooth_spectrum,
    trim_silence,
)
from heedful.data.fsdd import (
    FsddRecording,
    build_digit_strings,
    split_recordings,
)
from heedful.data.utterances import Utterance, UtteranceBatches, augment
from heedful.decode.ctc import ctc_greedy_decode, ctc_transcribe, digit_error_rate, sentence_accuracy
from heedful.errors import ConfigError, DataError, UserError, warn
from heedful.explain.capture import capture
from heedful.models.speech import SpeechModel
from heedful.tasks.base import (
    Batch,
    BatchSource,
    DataBundle,
    EvalResult,
    Explanation,
    Prediction,
    Task,
    register_task,
)
from heedful.tasks.speech_config import SpeechTaskConfig

BatchSource.register(UtteranceBatches)  # heedful.data does not import tasks; it is one all the same

HOP_SECONDS = 0.01  # log_mel's default hop: 80 samples at 8 kHz
# How many silent or too-short files a task remembers having warned about (the most recent): enough
# for one command's second read (--show-attention) to stay quiet, bounded for a server that lives on.
WARNED_EMPTY_KEPT = 1024
# A file this many times longer than the model hears is refused from its header, trimming or not.
TRIM_SLACK = 4


@register_task
class SpeechTask(Task):
    name = "speech"
    config_class = SpeechTaskConfig
    inputs = "audio"  # predict() takes sound files
    model_types = ("speech",)
    requires = ("soundfile", "soxr", "jiwer")  # reading and resampling audio, digit error rates
    trained_settings = ("data.sample_rate", "data.mode")  # the features' rate; digits or CTC strings

    @classmethod
    def commands(cls) -> list:
        from heedful.tasks.verbs.speech import transcribe

        return [transcribe]

    cfg: SpeechTaskConfig

    # ---------------------------------------------------------------------------------------- data
    def features(self, wave, warp: float = 1.0) -> Tensor:
        d, m = self.cfg.data, self.cfg.model
        features = log_mel(wave, d.sample_rate, n_mels=m.n_mels, warp=warp)  # (T, M)
        if m.n_cepstra is not None:
            features = smooth_spectrum(features, m.n_cepstra)
        return normalize(features, per_bin_variance=m.per_bin_variance, per_bin_mean=m.per_bin_mean)

    def _read(self, path, mono: Literal["error", "mix"] = "error"):
        """A clip as the model hears it: read, resampled, and trimmed when ``data.trim_db`` is set."""
        d = self.cfg.data
        # From the header, before reading: trimming may yet cut silence away, so allow for it there.
        slack = 1 if d.trim_db is None else TRIM_SLACK
        wave = read_audio(path, d.sample_rate, mono=mono, before_reading=lambda n: self._check_length(path, n, slack))
        if d.trim_db is not None:
            wave = trim_silence(wave, d.sample_rate, d.trim_db, d.trim_margin, end_floor_db=d.trim_end_db)
        self._check_length(path, len(wave))
        return wave

    def _check_length(self, path, n_samples: int, slack: int = 1) -> None:
        """Refuse a clip longer than the model's position table (``model.max_frames`` frames after
        the front end, each of whose blocks halves time) before any feature or batch is made of it:
        an hour of audio is a wrong file, not an utterance, and would otherwise fail deep in the
        model (after minutes of training, when it is a training clip). ``slack``: refuse only
        beyond that many times the limit (a length before silence is trimmed)."""
        m, rate = self.cfg.model, self.cfg.data.sample_rate
        frames = 1 + n_samples // slack // DEFAULT_HOP  # log_mel's frames (centred STFT)
        for _ in m.conv_channels:
            frames = (frames - 1) // 2 + 1  # kernel 3, stride 2, padding 1
        if frames > m.max_frames:
            longest = (m.max_frames * 2 ** len(m.conv_channels) - 1) * DEFAULT_HOP / rate
            raise DataError(
                f"{path}: {n_samples / rate:.1f} s of audio; this model hears at most {longest:.1f} s "
                f"(model.max_frames {m.max_frames} frames after the front end) — cut it into shorter clips"
            )

    def _noisy(self, wave, seed: int):
        snr = self.cfg.data.test_noise_snr_db
        return wave if snr is None else add_noise(wave, snr, torch.Generator().manual_seed(seed))

    @property
    def _keeps_waves(self) -> bool:
        a = self.cfg.augment
        return (
            a.speed is not None or a.reverb is not None or a.noise_snr_db is not None or a.vtlp is not None
            or a.edge_crop > 0
        )  # fmt: skip

    def _recording_utterances(self, recordings: list[FsddRecording], noisy: bool) -> list[Utterance]:
        out = []
        for i, r in enumerate(recordings):
            wave = self._read(r.path)
            if noisy:
                wave = self._noisy(wave, self.cfg.seed * 100_003 + i)
            kept = wave if self._keeps_waves and not noisy else None
            out.append(Utterance(self.features(wave), str(r.digit), r.speaker, str(r.path), kept))
        return out

    def _string_utterances(self, recordings: list[FsddRecording], n: int, seed: int, noisy: bool) -> list[Utterance]:
        d = self.cfg.data
        strings = build_digit_strings(
            recordings, n, seed=seed, sample_rate=d.sample_rate, min_digits=d.min_digits, max_digits=d.max_digits,
            noise_snr_db=d.string_noise_snr_db,
        )  # fmt: skip
        out = []
        for i, s in enumerate(strings):
            wave = self._noisy(s.wave, seed + i) if noisy else s.wave
            kept = wave if self._keeps_waves and not noisy else None
            out.append(Utterance(self.features(wave), s.label, s.speaker, "+".join(map(str, s.sources)), kept))
        return out

    def _splits(self) -> tuple[list[FsddRecording], list[FsddRecording], list[FsddRecording]]:
        return split_recordings(self.cfg.data, self.cfg.seed)

    def build_data(self, cfg: SpeechTaskConfig) -> DataBundle:
        d = cfg.data
        train_rec, val_rec, test_rec = self._splits()
        if d.mode == "digits":
            train = self._recording_utterances(train_rec, noisy=False)
            val = self._recording_utterances(val_rec, noisy=True)
            test = self._recording_utterances(test_rec, noisy=True)
        else:
            train = self._string_utterances(train_rec, d.n_train_strings, cfg.seed, noisy=False)
            val = self._string_utterances(val_rec, d.n_val_strings, cfg.seed + 1, noisy=True)
            test = self._string_utterances(test_rec, d.n_test_strings, cfg.seed + 2, noisy=True)
        source = UtteranceBatches(train, cfg.train.batch_size, cfg.seed, self.collate, self.augment)
        self.data = DataBundle(source, {"val": val, "test": test}, {"n_train": len(train)})
        return self.data

    def augment(self, utterance: Utterance, generator: torch.Generator) -> Tensor:
        """Training-time view of an utterance (data/utterances.py), drawn from ``generator``."""
        return augment(utterance, self.cfg.augment, self.cfg.data.sample_rate, self.features, generator)

    @staticmethod
    def pad(features: list[Tensor]) -> Batch:
        """(T_i, M) each -> {"features": (B, T_max, M) zero-padded, "lengths": (B,)}."""
        lengths = torch.tensor([f.shape[0] for f in features])
        padded = torch.zeros(len(features), int(lengths.max()), features[0].shape[1])
        for i, f in enumerate(features):
            padded[i, : f.shape[0]] = f
        return {"features": padded, "lengths": lengths}

    def collate(self, utterances: list[Utterance], features: list[Tensor] | None = None) -> Batch:
        batch = self.pad(features if features is not None else [u.features for u in utterances])
        if self.cfg.model.head == "classify":
            batch["labels"] = torch.tensor([int(u.label) for u in utterances])
        else:  # CTC targets: digit d is symbol d + 1; 0 is the blank
            target_lengths = torch.tensor([len(u.label) for u in utterances])
            targets = torch.zeros(len(utterances), int(target_lengths.max()), dtype=torch.long)
            for i, u in enumerate(utterances):
                targets[i, : len(u.label)] = torch.tensor([int(c) + 1 for c in u.label])
            batch |= {"targets": targets, "target_lengths": target_lengths}
        return batch

    def build_model(self, cfg: SpeechTaskConfig, data: DataBundle) -> nn.Module:
        if (cfg.data.mode == "strings") != (cfg.model.head == "ctc"):
            raise ConfigError(
                "config key 'model.head': use 'ctc' with data.mode 'strings' and 'classify' with 'digits'"
            )
        return SpeechModel(cfg.model)

    # ---------------------------------------------------------------------------------------- loss
    def _ctc_loss(self, logits: Tensor, frame_lengths: Tensor, batch: Batch, reduction: str = "mean") -> Tensor:
        log_probs = logits.float().log_softmax(-1).transpose(0, 1)  # (T', B, V)
        return F.ctc_loss(log_probs, batch["targets"], frame_lengths, batch["target_lengths"], blank=0,
                          reduction=reduction, zero_infinity=True)  # fmt: skip

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        logits, frame_lengths = model(batch["features"], batch["lengths"])
        B = batch["features"].shape[0]
        if self.cfg.model.head == "classify":
            loss = F.cross_entropy(logits.float(), batch["labels"], label_smoothing=self.cfg.train.label_smoothing)
            accuracy = float((logits.argmax(-1) == batch["labels"]).float().mean())
        else:
            loss = self._ctc_loss(logits, frame_lengths, batch)
            hyps = [
                "".join(str(s - 1) for s in seq)
                for seq in ctc_greedy_decode(logits.detach().float().log_softmax(-1), lengths=frame_lengths)
            ]
            refs = [
                "".join(str(int(t) - 1) for t in row[:n])
                for row, n in zip(batch["targets"], batch["target_lengths"], strict=True)
            ]
            accuracy = sentence_accuracy(refs, hyps)
        return loss, {"loss": float(loss.detach()), "accuracy": accuracy, "weight": B}

    # ------------------------------------------------------------------------------------ evaluate
    def _utterances(self, split: str) -> list[Utterance]:
        if self.data is None or split not in self.data.splits:
            raise UserError(f"no {split!r} split; available: val, test")
        return self.data.splits[split]

    def _decode(self, logits: Tensor, frame_lengths: Tensor) -> list[tuple[str, float]]:
        """Per utterance: (label, confidence). Classify: arg-max class and its probability. CTC:
        best transcription (greedy or beam) and its total probability over alignments."""
        if self.cfg.model.head == "classify":
            probs = logits.float().softmax(-1)
            best = probs.argmax(-1)
            return [(str(int(c)), float(probs[i, c])) for i, c in enumerate(best)]
        decoded = ctc_transcribe(logits.float().log_softmax(-1), frame_lengths, self.cfg.decode.beam_size)
        return [("".join(str(s - 1) for s in seq), probability) for seq, probability in decoded]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str) -> EvalResult:
        utterances = self._utterances(split)
        model.eval()
        device = next(model.parameters()).device
        size = self.cfg.train.eval_batch_size
        loss_sum, refs, hyps, speakers = 0.0, [], [], []
        for start in range(0, len(utterances), size):
            chunk = utterances[start : start + size]
            batch = {k: v.to(device) for k, v in self.collate(chunk).items()}
            logits, frame_lengths = model(batch["features"], batch["lengths"])
            if self.cfg.model.head == "classify":
                loss_sum += float(F.cross_entropy(logits.float(), batch["labels"], reduction="sum"))
            else:
                loss_sum += float(self._ctc_loss(logits, frame_lengths, batch, reduction="sum"))
            hyps += [label for label, _ in self._decode(logits, frame_lengths)]
            refs += [u.label for u in chunk]
            speakers += [u.speaker for u in chunk]
        metrics = {"loss": loss_sum / len(utterances)} | self._accuracies(split, refs, hyps, speakers)
        if self.cfg.model.head == "ctc":
            metrics["der"] = digit_error_rate(refs, hyps)
        return EvalResult(metrics)

    @staticmethod
    def _accuracies(split: str, refs: list[str], hyps: list[str], speakers: list[str]) -> dict[str, float]:
        """Accuracy, and on test each speaker's (for speaker-independent reports)."""
        metrics = {"accuracy": sentence_accuracy(refs, hyps)}
        if split == "test":
            for speaker in sorted(set(speakers)):
                pairs = [(r, h) for r, h, s in zip(refs, hyps, speakers, strict=True) if s == speaker]
                metrics[f"accuracy_{speaker}"] = sum(r == h for r, h in pairs) / len(pairs)
        return metrics

    def _held_out_recordings(self, split: str) -> list[FsddRecording]:
        """A held-out split's recordings, listed without building any features."""
        if split not in ("val", "test"):
            raise UserError(f"no {split!r} split; available: val, test")
        if self.cfg.data.mode != "digits":
            raise UserError("only isolated-digit runs (data.mode: digits) can be scored as an ensemble")
        if self.cfg.data.test_noise_snr_db is not None:  # each run would draw its own noise
            raise UserError("an ensemble hears the clips as recorded; this run adds noise to held-out clips "
                            "(data.test_noise_snr_db) — score it with --set data.test_noise_snr_db=null")  # fmt: skip
        _, val, test = self._splits()
        return val if split == "val" else test

    def split_inputs(self, split: str) -> list[str]:
        """The split's audio files, in the order ``evaluate`` scores them."""
        return [str(r.path) for r in self._held_out_recordings(split)]

    def score_probabilities(self, split: str, probs: Tensor) -> EvalResult:
        """Loss, accuracy and (on test) each speaker's accuracy from digit probabilities (N, 10)."""
        recordings = self._held_out_recordings(split)
        labels = torch.tensor([r.digit for r in recordings])  # (N,)
        loss = float(F.nll_loss(probs.float().clamp(min=1e-12).log(), labels))
        hyps = [str(int(c)) for c in probs.argmax(-1)]
        refs, speakers = [str(r.digit) for r in recordings], [r.speaker for r in recordings]
        return EvalResult({"loss": loss} | self._accuracies(split, refs, hyps, speakers))

    # ------------------------------------------------------------------------------- predict/explain
    def _load(self, inputs: list[Any]) -> list[Utterance]:
        utterances = []
        for item in inputs:
            wave = self._read(item, mono="mix")
            self._warn_if_empty(item, wave)
            utterances.append(Utterance(self.features(wave), "", "", str(item)))
        return utterances

    def _warn_if_empty(self, path: Any, wave: Any) -> None:
        """A clip with nothing to hear still gets a transcription and a confidence: say so, once a file."""
        rate = self.cfg.data.sample_rate
        if len(wave) < DEFAULT_WIN:  # not one whole 25 ms analysis window
            problem = f"too short ({len(wave)} sample{'s' * (len(wave) != 1)}, {len(wave) / rate * 1000:.1f} ms)"
        elif float(abs(wave).max()) < 1 / 32768:  # below a 16-bit file's smallest step
            problem = "silent"
        else:
            return
        # Insertion-ordered, oldest first: a path seen again moves to the end, the oldest drops out.
        warned: dict[str, None] = self.__dict__.setdefault("_warned_empty", {})
        key = str(path)
        if key not in warned:
            warn(f"{path}: {problem}; its transcription means nothing")
        warned.pop(key, None)
        warned[key] = None
        while len(warned) > WARNED_EMPTY_KEPT:
            del warned[next(iter(warned))]

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: list[Any]) -> list[Prediction]:
        return self._run(model, self._load(inputs))[0]

    def _run(self, model: nn.Module, utterances: list[Utterance]) -> tuple[list[Prediction], Tensor]:
        """One forward pass over ``utterances``: their predictions and frame lengths (B,)."""
        model.eval()
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in self.pad([u.features for u in utterances]).items()}
        logits, frame_lengths = model(batch["features"], batch["lengths"])
        if self.cfg.model.head == "classify":  # every digit's probability, as every classifier gives
            classes = [str(d) for d in range(logits.shape[-1])]
            return self.predictions([u.source for u in utterances], logits.float().softmax(-1), classes), frame_lengths
        return [
            Prediction(u.source, label, conf)
            for u, (label, conf) in zip(utterances, self._decode(logits, frame_lengths), strict=True)
        ], frame_lengths

    @torch.no_grad()
    def class_probabilities(self, model: nn.Module, inputs: list[Any]) -> tuple[Tensor, list[str]]:
        """The digits' probabilities (N, 10) for audio files, each heard as this run hears it (its
        own trim and features), and the class names "0"–"9". Classifier head only: a CTC head's
        outputs are per frame, and two runs' frames need not line up."""
        if self.cfg.model.head != "classify":
            raise UserError(f"a {self.cfg.model.head!r}-head speech run transcribes strings; "
                            "only classifier runs (model.head: classify) can join an ensemble")  # fmt: skip
        classes = [str(digit) for digit in range(self.cfg.model.n_classes)]
        if not inputs:
            return torch.zeros(0, len(classes)), classes
        model.eval()
        device = next(model.parameters()).device
        size = self.cfg.train.eval_batch_size
        parts = []
        for start in range(0, len(inputs), size):  # files are read a batch at a time
            features = [u.features for u in self._load(inputs[start : start + size])]
            batch = {k: v.to(device) for k, v in self.pad(features).items()}
            logits, _ = model(batch["features"], batch["lengths"])  # (B, 10)
            parts.append(logits.float().softmax(-1).cpu())
        return torch.cat(parts), classes

    @torch.no_grad()
    def explain(self, model: nn.Module, inputs: list[Any]) -> list[Explanation]:
        if self.cfg.model.encoder != "attention":
            raise UserError(f"this run's encoder is {self.cfg.model.encoder!r}: it has no self-attention to show")
        utterances = self._load(inputs)
        with capture(model) as seen:  # the prediction and its attention come from one pass
            predictions, frame_lengths = self._run(model, utterances)
        layer = self.cfg.decode.explain_layer % self.cfg.model.n_layers
        name = f"layers.{layer}.self_attn"
        head = self.cfg.decode.explain_head
        explanations = []
        for i, (p, u) in enumerate(zip(predictions, utterances, strict=True)):
            n = int(frame_lengths[i])
            weights = {k: v[i, :, :n, :n].cpu() for k, v in seen.items()}
            summary = weights[name].mean(0) if head is None else weights[name][head]
            which = "mean over heads" if head is None else f"head {head}"
            explanations.append(Explanation(
                prediction=p, query_tokens=[], key_tokens=[], weights=weights, summary=summary,
                title=f"{Path(p.input).name} → {p.output} ({p.score:.2f})   {name}, {which}",
                context={"features": u.features, "frame_seconds": HOP_SECONDS * 2 ** len(self.cfg.model.conv_channels)},
            ))  # fmt: skip
        return explanations

    def plot_explanation(self, explanation: Explanation, path: Path) -> Path:
        from heedful.explain.plots import spectrogram_attention

        return spectrogram_attention(
            explanation.context["features"], explanation.summary, path, hop_seconds=HOP_SECONDS,
            frame_seconds=explanation.context["frame_seconds"], title=explanation.title,
        )  # fmt: skip
