"""Labelled texts, as the text tasks (classify, mlm) train on them: an encoded example per text,
a seeded train / val / test split that keeps identical texts together, and shuffled batches
reproducible from (seed, epoch). Reading the rows is :mod:`heedful.data.text`'s."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from heedful.errors import ConfigError


@dataclass(frozen=True)
class Example:
    text: str
    label: int
    group: str | None
    ids: tuple[int, ...]  # the first (often only) window: what training sees
    more: tuple[tuple[int, ...], ...] = ()  # truncation: windows — the text's further windows

    @property
    def windows(self) -> list[list[int]]:
        return [list(self.ids), *map(list, self.more)]


def _text_key(text: str) -> str:
    return " ".join(text.split())


def split_examples(rows: list, cfg: Any, seed: int) -> dict[str, list]:
    """train / val / test by seeded fractions, or by k folds; identical texts stay together.
    ``cfg`` is a data section with ``val_fraction``, ``test_fraction``, ``folds`` and ``fold``
    (tasks/labelled_text.py's ``ClassifyData``)."""
    texts = sorted({_text_key(r.text) for r in rows})
    random.Random(seed).shuffle(texts)
    n = len(texts)
    if cfg.folds:
        if cfg.fold >= cfg.folds:
            raise ConfigError(f"config key 'data.fold': {cfg.fold} is not below data.folds ({cfg.folds})")
        part = {t: ("test" if i % cfg.folds == cfg.fold else "rest") for i, t in enumerate(texts)}
        rest = [t for t in texts if part[t] == "rest"]
        for t in rest[: round(len(rest) * cfg.val_fraction)]:
            part[t] = "val"
    else:
        n_test, n_val = round(n * cfg.test_fraction), round(n * cfg.val_fraction)
        part = {t: "test" if i < n_test else "val" if i < n_test + n_val else "rest" for i, t in enumerate(texts)}
    out: dict[str, list] = {"train": [], "val": [], "test": []}
    for row in rows:
        name = part[_text_key(row.text)]
        out["train" if name == "rest" else name].append(row)
    return out


class ExampleBatches:
    """Shuffled batches of ``batch_size``, reproducible from (seed, epoch); with ``weights``,
    examples are drawn with replacement in proportion to them (class-balanced sampling).

    With ``bucket`` the shuffled order is cut into pools of 50 batches, each pool sorted by
    length before it is cut into batches, and the batches shuffled again: a batch then holds
    texts of similar length, so little of it is padding (reviews run from 3 words to 1,000),
    while which texts meet in a batch still changes every epoch.

    A ``BatchSource`` (tasks/labelled_text.py registers it: ``heedful.data`` does not import
    the tasks)."""

    POOL_BATCHES = 50

    def __init__(
        self,
        examples: list[Example],
        batch_size: int,
        seed: int,
        collate,
        weights: list[float] | None,
        bucket: bool = False,
    ):
        self.examples, self.batch_size, self.seed, self.collate, self.weights, self.bucket = (
            examples, batch_size, seed, collate, weights, bucket,
        )  # fmt: skip

    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.examples) / self.batch_size)

    def batches(self, epoch: int) -> Iterator[Any]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.examples)
        if self.weights is None:
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = torch.multinomial(torch.tensor(self.weights), n, replacement=True, generator=g).tolist()
        batches = [order[start : start + self.batch_size] for start in range(0, n, self.batch_size)]
        if self.bucket:
            pool = self.POOL_BATCHES * self.batch_size
            batches = []
            for start in range(0, n, pool):
                by_length = sorted(order[start : start + pool], key=lambda i: len(self.examples[i].ids))
                batches += [by_length[k : k + self.batch_size] for k in range(0, len(by_length), self.batch_size)]
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        for rows in batches:
            yield self.collate([self.examples[i] for i in rows])
