"""The task interface: everything the shared trainer, the CLI and ``explain`` need from a task.

A task owns its data, its model builder, its loss and its metrics (fairseq's idea, one level of
lookup deep): ``get_task("translate")`` returns the class, nothing more magic than that. Adding a
task touches only ``tasks/`` and ``configs/``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from heedful.config import RunConfig
from heedful.errors import UserError
from heedful.tasks.registry import TASKS, get_task, register_task  # noqa: F401 - task modules import them from here

Batch = dict[str, Any]


class BatchSource(ABC):
    """Training batches for one epoch, reproducible from (seed, epoch) alone.

    Because an epoch's batches depend only on its number, a resumed run rebuilds the epoch and
    skips the batches it already trained on — no iterator state needs saving.
    """

    @abstractmethod
    def batches(self, epoch: int) -> Iterator[Batch]: ...

    @abstractmethod
    def steps_per_epoch(self) -> int: ...


@dataclass
class DataBundle:
    train: BatchSource
    splits: dict[str, Any]  # "val", "test", …: whatever the task's evaluate() reads
    info: dict[str, Any] = field(default_factory=dict)  # vocab sizes etc., for build_model


@dataclass
class Prediction:
    input: Any
    output: Any
    score: float | None = None  # e.g. sequence log-probability or class probability


@dataclass
class Explanation:
    """What a prediction attended to: token labels on both axes and the captured weights."""

    prediction: Prediction
    query_tokens: list[str]  # rows (e.g. target characters)
    key_tokens: list[str]  # columns (e.g. source characters)
    weights: dict[str, Tensor]  # module path -> (H, T_q, T_k) for this one example
    summary: Tensor  # (T_q, T_k): the map a heatmap shows by default
    title: str = ""
    context: dict[str, Any] = field(default_factory=dict)  # task-specific, e.g. the spectrogram


class Task(ABC):
    """One kind of prediction. Subclasses set ``name`` and ``config_class``."""

    name: ClassVar[str]
    config_class: ClassVar[type[RunConfig]]
    # Packages of optional extras the task needs (import names, see heedful/extras.py): ``get_task``
    # refuses the task in one line when one is missing. The module imports them inside functions.
    requires: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.data: DataBundle | None = None
        # Filled by evaluate() for tasks that generate text: split -> one output line per example
        # (written to run_dir/hyps-<split>.txt), and split -> extra facts for eval-<split>.json
        # (e.g. sacreBLEU signatures).
        self.outputs: dict[str, list[str]] = {}
        self.notes: dict[str, dict[str, Any]] = {}

    # -- data and model ---------------------------------------------------------------------------
    @abstractmethod
    def build_data(self, cfg: RunConfig) -> DataBundle:
        """Build (or read) the data; keeps it on ``self.data`` for evaluate/predict."""

    @abstractmethod
    def build_model(self, cfg: RunConfig, data: DataBundle) -> nn.Module: ...

    # -- training ---------------------------------------------------------------------------------
    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        """Mean loss of a batch, and batch statistics (means) to log; key ``weight`` (e.g. the
        number of target tokens) weights the batch when the trainer averages over an epoch."""

    @abstractmethod
    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        """Metrics on a held-out split ("val", "test"); include ``loss`` and ``accuracy``."""

    def validate(self, model: nn.Module) -> dict[str, float]:
        """The trainer's end-of-epoch check; tasks may make it cheaper than a full ``evaluate``."""
        return self.evaluate(model, "val")

    # -- using a trained model --------------------------------------------------------------------
    @abstractmethod
    def predict(self, model: nn.Module, inputs: list[Any]) -> list[Prediction]: ...

    @abstractmethod
    def explain(self, model: nn.Module, inputs: list[Any]) -> list[Explanation]: ...

    def class_probabilities(self, model: nn.Module, inputs: list[Any]) -> tuple[Tensor, list[str]]:
        """Class probabilities (N, C) of the inputs and the C class names: what an ensemble of
        runs averages. Tasks whose predictions are one class out of a fixed set provide it."""
        raise UserError(f"a {self.name!r} run does not predict class probabilities, so it cannot join an ensemble")

    def split_inputs(self, split: str) -> list[Any]:
        """A held-out split's inputs, in order, as ``class_probabilities`` takes them (file paths,
        texts): what an ensemble is scored on."""
        raise UserError(f"a {self.name!r} run cannot score an ensemble on a held-out split")

    def score_probabilities(self, split: str, probs: Tensor) -> dict[str, float]:
        """The split's metrics, as ``evaluate`` reports them, from class probabilities (N, C) of
        its ``split_inputs``: an ensemble's average, or one run's."""
        raise UserError(f"a {self.name!r} run cannot score an ensemble on a held-out split")

    def baselines(self, split: str) -> dict[str, dict[str, float]]:
        """Simple peers fit on the training data and scored on ``split`` like the model (name ->
        metrics; e.g. the majority class), so ``evaluate`` shows what the model adds; {}: none."""
        return {}

    def predictions(self, inputs: list[Any], probs: Tensor, classes: list[str]) -> list[Prediction]:
        """Per input, from its class probabilities (N, C): the likeliest class and its probability."""
        best = probs.argmax(-1).tolist()  # (N,)
        return [Prediction(x, classes[c], float(row[c])) for x, row, c in zip(inputs, probs, best, strict=True)]

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups, when the task wants its own (e.g. layer-wise learning-rate
        decay: a group's ``lr_scale`` multiplies the scheduled rate); None: the trainer's default."""
        return None

    def after_validation(self, model: nn.Module, epoch: int, run_dir: Path) -> None:  # noqa: B027 - optional hook
        """Called by the trainer after each epoch's validation, with the weights it validated
        (e.g. to save a sample grid into ``run_dir/plots``)."""

    def write_reports(self, split: str, directory: Path) -> list[Path]:
        """Figures for the last ``evaluate(split)`` (e.g. a confusion matrix), written into
        ``directory``; returns their paths."""
        return []

    # -- what a model folder needs besides weights (vocabularies, tokenizers) ----------------------
    def save_artifacts(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Write tokenizer/vocabulary files next to the model weights."""

    def load_artifacts(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Read what save_artifacts wrote, so predict() works without rebuilding the data."""

    def plot_explanation(self, explanation: Explanation, path: Path) -> Path:
        """Draw one explanation as a PNG; by default a heatmap of ``summary`` with token labels."""
        from heedful.explain.plots import attention_heatmap

        return attention_heatmap(
            explanation.summary, explanation.query_tokens, explanation.key_tokens, path, title=explanation.title
        )

    def load_model(self, directory: Path, device: str = "cpu") -> nn.Module:
        from heedful.models import load_pretrained

        return load_pretrained(directory, device)
