"""The task interface: everything the shared trainer, the CLI and ``explain`` need from a task.

A task owns its data, its model builder, its loss and its metrics (fairseq's idea, one level of
lookup deep): ``get_task("translate")`` returns the class, nothing more magic than that. Adding a
task touches only ``tasks/`` and ``configs/``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from heedful.config import RunConfig
from heedful.errors import CheckpointError, UserError
from heedful.tasks.registry import TASKS, get_task, register_task  # noqa: F401 - task modules import them from here
from heedful.tasks.verbs import TrainOption

Batch = dict[str, Any]


def input_list(inputs: Any, method: str) -> list[Any]:
    """``inputs`` as a list. One text (or path) given alone is refused: iterated, it would be
    predicted character by character; so is anything that is not a collection (None, a number)."""
    if isinstance(inputs, str | bytes | Path):
        one = type(inputs).__name__
        raise UserError(f"{method} takes a list of inputs, not one {one}: {method}([{_short(inputs)}])")
    if not isinstance(inputs, Iterable):
        raise UserError(f"{method} takes a list of inputs, not {_short(inputs)}")
    return list(inputs)


def text_list(inputs: Any, method: str) -> list[str]:
    """``input_list`` for tasks that read text: each input must be a ``str`` (bytes would be read
    as unknown characters, a number has no text)."""
    texts = input_list(inputs, method)
    for i, text in enumerate(texts, 1):
        if not isinstance(text, str):
            raise UserError(f"{method}: input {i} is {_short(text)} ({type(text).__name__}); expected a text (str)")
    return texts


def _short(value: Any) -> str:
    """A value's repr cut to about 30 characters, for a one-line message."""
    shown = repr(value)
    return shown if len(shown) <= 32 else f"{shown[:29]}..."


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
    """One input's prediction; every task's predictions share this core (tasks add their own fields)."""

    input: Any
    output: Any
    score: float | None = None  # e.g. sequence log-probability or class probability
    # Where the task has classes: every class's probability (class name -> probability).
    probabilities: dict[str, float] | None = field(default=None, kw_only=True)
    # When asked for: the attention behind the output (e.g. (T_out, T_in) cross-attention).
    attention: Tensor | None = field(default=None, kw_only=True, repr=False)

    def record(self) -> dict[str, Any]:
        """The JSON-ready core: input, output, score, and the probabilities where there are classes."""
        record = {"input": self.input, "output": self.output, "score": self.score}
        if self.probabilities is not None:
            record["probabilities"] = self.probabilities
        return record


@dataclass(eq=False)
class EvalResult(Mapping[str, float]):
    """What ``evaluate`` found on one split. It reads as the mapping of its metrics
    (``result["accuracy"]``, ``dict(result)``); the rest travels beside them."""

    metrics: dict[str, float]
    # JSON-ready facts for eval-<split>.json beside the metrics (e.g. sacreBLEU signatures, a
    # confusion matrix); a task's ``describe`` says which of them a console shows.
    notes: dict[str, Any] = field(default_factory=dict)
    # tasks that generate text: one line per example (hyps-<split>.txt); long, so not in the repr
    outputs: list[str] | None = field(default=None, repr=False)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> metrics (Task.baselines)
    artifacts: dict[str, Path] = field(default_factory=dict)  # files written: "eval" (the JSON), "hyps"
    figures: list[Path] = field(default_factory=list)  # figures written (Task.write_reports)

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.metrics)

    def __len__(self) -> int:
        return len(self.metrics)

    def record(self) -> dict[str, Any]:
        """What eval-<split>.json holds: the metrics, the notes and (if any) the baselines; a
        metric that is undefined (NaN: a correlation over one group) is null, so the file is JSON
        every reader takes (Python writes NaN, which JavaScript, jq and others refuse)."""
        record: dict[str, Any] = {**self.metrics, **self.notes}
        return _finite(record | ({"baselines": self.baselines} if self.baselines else {}))


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, ±inf) in it replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


@dataclass
class Explanation:
    """What a prediction attended to: token labels on both axes and the captured weights."""

    prediction: Prediction
    query_tokens: list[str]  # rows (e.g. target characters)
    key_tokens: list[str]  # columns (e.g. source characters)
    weights: dict[str, Tensor] = field(repr=False)  # module path -> (H, T_q, T_k) for this one example
    summary: Tensor = field(repr=False)  # (T_q, T_k): the map a heatmap shows by default
    title: str = ""
    context: dict[str, Any] = field(default_factory=dict, repr=False)  # task-specific, e.g. the spectrogram
    # module path -> (H, T_k, T_k): the encoder's self-attention over the key tokens, from the same
    # pass, named ``encoder.layers.N.self_attn`` (what a rollout reads); empty where there is none
    self_attention: dict[str, Tensor] = field(default_factory=dict, repr=False)


class Task(ABC):
    """One kind of prediction. Subclasses set ``name`` and ``config_class``."""

    name: ClassVar[str]
    config_class: ClassVar[type[RunConfig]]
    # Packages of optional extras the task needs (import names, see heedful/extras.py): ``get_task``
    # refuses the task in one line when one is missing. The module imports them inside functions.
    requires: ClassVar[tuple[str, ...]] = ()
    #: The ``model_type`` values (models/pretrained.py) a run of this task holds in model/; a
    #: folder holding another kind is refused in one line. Empty: any (a task from elsewhere).
    model_types: ClassVar[tuple[str, ...]] = ()

    # Metrics `heedful evaluate` shows beside the baselines' (the first ones the result has).
    headline_metrics: ClassVar[tuple[str, ...]] = ("accuracy",)
    # Methods a ``Run`` of this task offers besides predict/evaluate/explain: Run attribute ->
    # task method name; ``run.<attribute>(*args)`` calls ``task.<method>(run.model, *args)``
    # (e.g. translate's ``run.translate(lines, beam=5)``).
    run_methods: ClassVar[dict[str, str]] = {}
    # What ``predict`` takes, for the server's request schema (heedful serve): "text" (strings),
    # "audio" (sound files) or "label" (a class name or any string: one generated output each).
    inputs: ClassVar[Literal["text", "audio", "label"]] = "text"
    # The Prediction subclass ``predict`` returns; its fields make the server's response schema.
    prediction_class: ClassVar[type[Prediction]] = Prediction
    # Config keys besides model.* that training fixed: ``load_run`` refuses ``--set`` on them
    # (speech: the sample rate its features were computed at).
    trained_settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.data: DataBundle | None = None

    # -- the command line: what this task adds to `heedful` --------------------------------------
    @classmethod
    def commands(cls) -> list[Callable[..., Any]]:
        """The task's own verbs, as typer command functions (the function name, with ``_`` as
        ``-``, is the verb; its docstring the help). They load a run through the context's loader
        (``heedful.tasks.commands.RunLoader``), since a task may not import the CLI or ``runs``."""
        return []

    @classmethod
    def train_options(cls) -> list[TrainOption]:
        """Flags this task adds to `heedful train`, each a shortcut for one config key."""
        return []

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
    def evaluate(self, model: nn.Module, split: str) -> EvalResult:
        """Metrics on a held-out split ("val", "test"), with ``loss`` and ``accuracy``, and what
        else the split has to say (notes, output lines)."""

    def validate(self, model: nn.Module) -> Mapping[str, float]:
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

    def ensemble_model(self, models: list[nn.Module], tasks: list[Task]) -> nn.Module:
        """One model made of several runs' models (``tasks[i]`` opened ``models[i]``; ``self`` is
        the first), used wherever one model is (translate averages next-token log-probabilities
        inside its searches). Tasks whose ensembles average class probabilities instead give
        ``class_probabilities``."""
        raise UserError(f"a {self.name!r} run does not decode as an ensemble")

    def split_inputs(self, split: str) -> list[Any]:
        """A held-out split's inputs, in order, as ``predict`` and ``class_probabilities`` take
        them (file paths, texts): what an ensemble or an export is scored on."""
        raise UserError(f"a {self.name!r} run cannot score an ensemble on a held-out split")

    def score_predictions(self, split: str, predictions: list[Prediction]) -> EvalResult:
        """The split's metrics that its predictions alone give (``predict`` of its ``split_inputs``,
        in order), without the model: what an export, which keeps no weights to run a loss with, is
        scored on (``heedful evaluate EXPORT``)."""
        raise UserError(f"a {self.name!r} run's predictions alone cannot be scored; evaluate the run")

    def score_probabilities(self, split: str, probs: Tensor) -> EvalResult:
        """The split's metrics, as ``evaluate`` reports them, from class probabilities (N, C) of
        its ``split_inputs``: an ensemble's average, or one run's."""
        raise UserError(f"a {self.name!r} run cannot score an ensemble on a held-out split")

    def baselines(self, split: str) -> dict[str, dict[str, float]]:
        """Simple peers fit on the training data and scored on ``split`` like the model (name ->
        metrics; e.g. the majority class), so ``evaluate`` shows what the model adds; {}: none."""
        return {}

    def predictions(self, inputs: list[Any], probs: Tensor, classes: list[str]) -> list[Prediction]:
        """Per input, from its class probabilities (N, C): the likeliest class, its probability,
        and every class's probability."""
        best = probs.argmax(-1).tolist()  # (N,)
        return [
            Prediction(x, classes[c], float(row[c]), probabilities=dict(zip(classes, row.tolist(), strict=True)))
            for x, row, c in zip(inputs, probs, best, strict=True)
        ]

    def parameter_groups(self, model: nn.Module, weight_decay: float) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups, when the task wants its own (e.g. layer-wise learning-rate
        decay: a group's ``lr_scale`` multiplies the scheduled rate); None: the trainer's default."""
        return None

    def after_validation(self, model: nn.Module, epoch: int, run_dir: Path) -> None:  # noqa: B027 - optional hook
        """Called by the trainer after each epoch's validation, with the weights it validated
        (e.g. to save a sample grid into ``run_dir/plots``); name what it writes in
        ``after_validation_files``."""

    def after_validation_files(self, epoch: int) -> list[str]:
        """The files ``after_validation`` writes at ``epoch``, relative to the run directory: the
        trainer lists them in ``.heedful/run.json`` before the hook runs, so a kill while it writes
        leaves none unlisted (files under ``plots/`` it does not name are listed once it returns)."""
        return []

    def write_reports(self, split: str, directory: Path, result: EvalResult) -> list[Path]:
        """Figures of ``result`` (``evaluate(split)``'s; e.g. a confusion matrix), written into
        ``directory``; returns their paths."""
        return []

    def describe(self, result: EvalResult, split: str) -> list[str]:
        """What `heedful evaluate` prints after the metrics: the notes that are one value each
        (e.g. sacreBLEU signatures), then the model beside its baselines."""
        lines = [f"{split} {k}: {v}" for k, v in result.notes.items() if isinstance(v, str | int | float)]
        return lines + self.baseline_lines(result)

    def baseline_lines(self, result: EvalResult) -> list[str]:
        """The model beside its baselines (fit on the same training data), on the headline metrics."""
        if not result.baselines:
            return []
        keys = [k for k in self.headline_metrics if k in result.metrics]
        rows = {"this model": result.metrics, **result.baselines}
        width = max(map(len, rows)) + 2
        lines = ["baselines, fit on the same training texts:", " " * width + "".join(f"{k:>16}" for k in keys)]
        for name, values in rows.items():
            lines.append(f"{name:<{width}}" + "".join(f"{values.get(k, float('nan')):>16.4f}" for k in keys))
        return lines

    # -- what a model folder needs besides weights (vocabularies, tokenizers) ----------------------
    def save_artifacts(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Write tokenizer/vocabulary files next to the model weights."""

    def load_artifacts(self, directory: Path) -> None:  # noqa: B027 - optional hook
        """Read what save_artifacts wrote, so predict() works without rebuilding the data."""

    def ensure_data(self, artifacts: Path) -> None:
        """A loaded run's data, built from its config the first time something scores it
        (``evaluate``, an ensemble, an export, a fine-tuning), then the run's own vocabulary files
        in ``artifacts`` read over what building made: the run's vocabulary wins."""
        if self.data is None:
            self.build_data(self.cfg)
            self.load_artifacts(artifacts)

    def plot_explanation(self, explanation: Explanation, path: Path) -> Path:
        """Draw one explanation as a PNG; by default a heatmap of ``summary`` with token labels."""
        from heedful.explain.plots import attention_heatmap

        return attention_heatmap(
            explanation.summary, explanation.query_tokens, explanation.key_tokens, path, title=explanation.title
        )

    def check_model_folder(self, directory: Path) -> None:
        """Refuse a model folder of another task's kind (``model_types``) in one line, before its
        vocabulary or weights are read: it would load, then fail deep inside."""
        from heedful.models.pretrained import CONFIG_NAME, read_model_config

        model_type = read_model_config(directory).get("model_type")
        if self.model_types and model_type not in self.model_types:
            raise CheckpointError(
                f"{directory / CONFIG_NAME}: holds a {model_type!r} model; a {self.name} run's model is "
                + " or ".join(repr(t) for t in self.model_types)
            )

    def load_model(self, directory: Path, device: str = "cpu") -> nn.Module:
        from heedful.models import load_pretrained

        self.check_model_folder(directory)
        return load_pretrained(directory, device)
