"""Utterances as the speech task trains on them: normalised log-mel features with their label,
batches of similar lengths reproducible from (seed, epoch), and the training-time augmentation
(edge crop, speed, reverb and noise on the waveform, VTLP, tempo, SpecAugment), every draw taken
from one generator so a resumed epoch hears the same."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from heedful.data.audio import add_noise, add_reverb, spec_augment, speed_perturb, stretch_time


@dataclass
class Utterance:
    features: Tensor  # (T, n_mels), normalised per utterance
    label: str  # "7" for a digit, "4071" for a string
    speaker: str
    source: str  # file path, or the files a string was built from
    wave: np.ndarray | None = None  # kept for training utterances when waveform augmentation is on


class UtteranceBatches:
    """Shuffled each epoch from (seed, epoch); similar lengths batched together to save padding;
    SpecAugment drawn from a generator seeded by the same — so a resumed epoch is the same epoch.
    A ``BatchSource`` (the speech task registers it: ``heedful.data`` does not import the tasks)."""

    def __init__(self, utterances: list[Utterance], batch_size: int, seed: int, collate, augment):
        self.utterances, self.batch_size, self.seed = utterances, batch_size, seed
        self.collate, self.augment = collate, augment

    def steps_per_epoch(self) -> int:
        return -(-len(self.utterances) // self.batch_size)

    def batches(self, epoch: int) -> Iterator[dict[str, Tensor]]:
        rng = random.Random(f"{self.seed}:{epoch}")
        order = list(range(len(self.utterances)))
        rng.shuffle(order)
        pool = 32 * self.batch_size  # sort by length within pools, then shuffle the batches
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=lambda i: self.utterances[i].features.shape[0])
            batches += [chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        generator = torch.Generator().manual_seed(rng.getrandbits(62))
        for indices in batches:
            chosen = [self.utterances[i] for i in indices]
            yield self.collate(chosen, [self.augment(u, generator) for u in chosen])


def draw_uniform(bounds: tuple[float, float], generator: torch.Generator) -> float:
    """One number drawn uniformly from ``[low, high)``: an augmentation's factor from its range."""
    low, high = bounds
    return low + (high - low) * float(torch.rand(1, generator=generator))


def crop_edges(wave: np.ndarray, max_samples: int, generator: torch.Generator) -> np.ndarray:
    """Cut 0..``max_samples`` samples (uniform, drawn apart) off each end of ``wave`` (T,),
    never more than a quarter of the clip at either end."""
    limit = min(max_samples, len(wave) // 4)
    start, end = (int(torch.randint(0, limit + 1, (1,), generator=generator)) for _ in range(2))
    return wave[start : len(wave) - end]


def augment(
    utterance: Utterance,
    a: Any,
    sample_rate: int,
    features_of: Callable[[np.ndarray, float], Tensor],
    generator: torch.Generator,
) -> Tensor:
    """Training-time view of an utterance as ``a`` (the speech task's ``augment`` section) says:
    edge crop, speed, reverb and noise on the waveform, a stretched spectrum (VTLP) and tempo
    (when configured), then SpecAugment on its features — all drawn from ``generator``, so
    reproducible. ``features_of(wave, warp)`` turns a waveform into features (T, n_mels)."""
    features = utterance.features
    if utterance.wave is not None:
        wave = utterance.wave
        if a.edge_crop > 0:
            wave = crop_edges(wave, round(a.edge_crop * sample_rate), generator)
        if a.speed is not None:
            wave = speed_perturb(wave, draw_uniform(a.speed, generator))
        # The room before the microphone's noise: noise is not reverberated.
        if a.reverb is not None and float(torch.rand(1, generator=generator)) < a.reverb_prob:
            rt60, drr = draw_uniform(a.reverb, generator), draw_uniform(a.reverb_drr_db, generator)
            wave = add_reverb(wave, sample_rate, rt60, drr, generator)
        if a.noise_snr_db is not None and float(torch.rand(1, generator=generator)) < a.noise_prob:
            wave = add_noise(wave, draw_uniform(a.noise_snr_db, generator), generator)
        warp = 1.0
        if a.vtlp is not None:
            # Two decimals: the filterbank of each factor is computed once and cached.
            warp = round(draw_uniform(a.vtlp, generator), 2)
        features = features_of(wave, warp)
    if a.tempo is not None:
        features = stretch_time(features, draw_uniform(a.tempo, generator))
    if not a.spec_augment:
        return features
    return spec_augment(
        features, n_freq_masks=a.n_freq_masks, max_freq_width=a.max_freq_width,
        n_time_masks=a.n_time_masks, max_time_width=a.max_time_width, generator=generator,
    )  # fmt: skip
