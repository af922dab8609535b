"""What a task adds to the command line: its own verbs and its `heedful train` flags.

A task's ``commands()`` returns typer command functions (``verbs/translate.py``,
``verbs/speech.py``, …) and ``train_options()`` a list of ``TrainOption``; ``heedful.cli``
mounts both, so the CLI names no task (fairseq's ``add_args``, one level deep). A verb opens
its run through the ``RunLoader`` the CLI puts on the typer context (``run_loader(ctx)``):
tasks sit below ``heedful.runs`` and the CLI and may not import them. These modules import
nothing heavy at the top, so ``heedful --help`` lists every task's verbs without loading models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from heedful.errors import ConfigError

SetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        help="Override a config field (repeatable): e.g. --set train.lr=3e-4 to train, --set decode.beam_size=1 "
        "to decode; a trained run's model.* and task are fixed. `heedful config CONFIG --fields` lists the fields.",
    ),
]
# The train.* keys a verb that reads a trained run still reads; the others only shape a training.
INFERENCE_TRAIN_KEYS = ("train.eval_batch_size", "train.progress")
VERB_TRAIN_KEYS = {"report": ("train.monitor",)}  # the curve a report marks


def refuse_training_overrides(ctx: typer.Context, overrides: list[str] | None) -> list[str] | None:
    """``--set train.<key>=…`` on a verb that reads a trained run, where nothing reads that key, is
    a one-line ``ConfigError`` (``evaluate --set train.batch_size=8`` changed nothing, exit 0)."""
    read = (*INFERENCE_TRAIN_KEYS, *VERB_TRAIN_KEYS.get(ctx.info_name or "", ()))
    for item in overrides or []:
        key = item.partition("=")[0].strip()
        if (key == "train" or key.startswith("train.")) and key not in read:
            raise ConfigError(f"--set {item}: {ctx.info_name} does not read {key}, which only shapes training; of "
                              f"train.*, --set here changes only {', '.join(read)}")  # fmt: skip
    return overrides


# The verbs that read a trained run: --set changes how it reads inputs and decodes, not what it learnt.
RunSetOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "-s",
        metavar="KEY=VALUE",
        callback=refuse_training_overrides,
        help="Change how the run reads inputs or decodes (repeatable): e.g. --set decode.beam_size=1; what "
        "training fixed (model.*, task, a speech run's sample rate) cannot change, and of train.* only "
        "eval_batch_size and progress are read (report: monitor too).",
    ),
]
DeviceOption = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]


@dataclass(frozen=True)
class TrainOption:
    """A `heedful train` flag a task adds: a shortcut for ``--set <key>=<value>``."""

    flag: str  # "--data"
    key: str  # the config key it sets: "data.path"
    help: str  # "Your CSV, TSV or JSONL of labelled texts"
    about: str  # what the task's flags are for, for the refusal on other tasks: "reading a file of labelled texts"
    type: type = str  # str or Path

    @property
    def name(self) -> str:
        """The flag as a Python name: --text-column -> text_column."""
        return self.flag.removeprefix("--").replace("-", "_")


def labelled_text_options() -> list[TrainOption]:
    """`heedful train` flags of the tasks that read a file of labelled texts (classify, mlm)."""
    about = "reading a file of labelled texts"
    return [
        TrainOption("--data", "data.path", "your CSV, TSV or JSONL of labelled texts", about, Path),
        TrainOption("--text-column", "data.text_column", "its text column", about),
        TrainOption("--label-column", "data.label_column", "its label column", about),
        TrainOption("--group-column", "data.group_column", "its product column, for product-level scores", about),
    ]


class RunLoader(Protocol):
    """How a verb opens run directories (the CLI provides it; ``heedful.runs`` does the work)."""

    def load_run(self, run_dir: Path, device: str, overrides: list[str] | None = None, *, task: str, verb: str) -> Any:
        """``heedful.runs.load_run``, refusing a run of another task than ``task`` in one line."""

    def with_ensemble(self, run: Any, others: list[Path] | None, device: str, overrides: list[str] | None) -> Any:
        """``run`` alone, or with ``others`` an ``Ensemble`` (class probabilities averaged, or one decoding model)."""

    def ct2_engine(self, run: Any, quantization: str) -> Any:
        """``run``'s translator decoded by CTranslate2 (``heedful.optimize.ct2.ct2_engine``): an
        object whose ``translate`` answers as ``run.translate`` does."""

    def is_export(self, folder: Path) -> bool:
        """Whether ``folder`` is an export (``heedful export``) rather than a run directory."""

    def open_export(self, folder: Path, overrides: list[str] | None, quantization: str | None, device: str) -> Any:
        """An export on its own (``heedful.optimize.export.open_export``; a ``device`` other than the
        CPU is refused in one line): ``cfg`` the run's config,
        ``runtime`` what computes it ("ctranslate2" or "onnxruntime"), ``predict`` as
        ``run.predict``'s, and for a translator's, ``translate`` as ``run.translate``'s."""


def run_loader(ctx: typer.Context) -> RunLoader:
    if ctx.obj is None:
        raise RuntimeError("a task's verb runs inside `heedful` (heedful.cli.app), which provides its run loader")
    return ctx.obj
