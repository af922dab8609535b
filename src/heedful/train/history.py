"""``History``: what ``fit()`` returns — per-epoch metrics, readable like Keras' ``History``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class History:
    """One dict of metrics per epoch (``train_loss``, ``val_loss``, ``train_accuracy``, …)."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    best_epoch: int | None = None  # the epoch number (from 1, as in each row's "epoch") whose weights model/ holds
    completed: bool = False  # fit() returned: every epoch ran, or early stopping / the time budget ended it

    @property
    def history(self) -> dict[str, list[float]]:
        """Metric name -> its value at each epoch, as in ``keras.callbacks.History.history``."""
        keys: dict[str, None] = {}
        for row in self.epochs:
            keys.update(dict.fromkeys(row))
        return {k: [row.get(k, float("nan")) for row in self.epochs] for k in keys}

    def __getitem__(self, metric: str) -> list[float]:
        return self.history[metric]

    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}

    def to_dict(self) -> dict:
        return {
            "epochs": self.epochs,
            "stopped_early": self.stopped_early,
            "best_epoch": self.best_epoch,
            "completed": self.completed,
        }

    @classmethod
    def from_dict(cls, data: dict) -> History:
        return cls(
            list(data.get("epochs", [])),
            bool(data.get("stopped_early")),
            data.get("best_epoch"),
            bool(data.get("completed")),
        )

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> History:
        return cls.from_dict(json.loads(path.read_text()))
