"""The Python twin of the CLI: load a config, train, and use a finished run directory.

cfg = load_config("configs/dates.yaml", overrides=["train.epochs=3"])
history = fit(cfg)                         # heedful train configs/dates.yaml --set train.epochs=3
run = load_run("runs/dates")
run.evaluate("test")                       # heedful evaluate runs/dates
run.predict(["5. März 2021"])              # heedful predict runs/dates "5. März 2021"
run.show_attention(["5. März 2021"])       # … --show-attention
load_ensemble(["runs/a", "runs/b"]).predict(["one.wav"])   # heedful transcribe runs/a one.wav --ensemble runs/b
load_ensemble(["runs/a", "runs/b"]).evaluate("test")        # heedful evaluate runs/a --ensemble runs/b
run.translate(["A man rides a bike."], beam=5)   # heedful translate runs/multi30k --beam 5 < in.txt
run.align(sources, targets)                # heedful align runs/multi30k --src en.txt --tgt fr.txt
run.report(inputs=["5. März 2021"])        # heedful report runs/dates --input "5. März 2021"
load_ensemble(["runs/m1", "runs/m2"]).translate(lines)  # heedful translate runs/m1 --ensemble runs/m2 < in.txt

``Run`` knows no task by name: ``evaluate``/``predict``/``explain`` call the task's, and a
task's own methods (``translate``, ``generate``) come from its ``run_methods``.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from heedful.config import ConfigError, RunConfig, override_list, read_yaml
from heedful.device import resolve_device
from heedful.errors import CheckpointError, UserError, a_run, article
from heedful.models.pretrained import ChangedWeights
from heedful.outputs import EXPORT_RECORD, check_output, check_output_folder
from heedful.tasks.base import EvalResult, Explanation, Prediction, Task, input_list
from heedful.tasks.registry import all_task_classes, config_from_data, get_task
from heedful.tasks.registry import load_config as load_config  # the Python API: heedful.runs.load_config
from heedful.train.checkpoint import list_checkpoints
from heedful.train.resume import resume_command
from heedful.train.rundir import record_written, restore_model_hint


@dataclass
class Run:
    """A trained run directory, ready to evaluate, predict and explain."""

    run_dir: Path
    cfg: RunConfig
    task: Task
    model: nn.Module
    overrides: tuple[str, ...] = ()  # the --set changes it was opened with, recorded in what evaluate writes

    def __repr__(self) -> str:  # the dataclass's would print the whole config and module tree
        return f"Run({str(self.run_dir)!r}, task={self.cfg.task!r}, model={type(self.model).__name__})"

    def predict(self, inputs: list[Any]) -> list[Prediction]:
        """One prediction per input (texts, or audio paths for speech), in order: ``.output``,
        ``.score`` and, for classifiers, ``.probabilities`` (``Prediction.record()`` gives JSON)."""
        return self.task.predict(self.model, input_list(inputs, "predict"))

    def explain(self, inputs: list[Any]) -> list[Explanation]:
        """Per input, its prediction and the attention behind it: the captured maps (``.weights``,
        module path -> (H, T_q, T_k)) and the map a figure shows (``.summary``)."""
        return self.task.explain(self.model, input_list(inputs, "explain"))

    def evaluate(self, split: str = "test") -> EvalResult:
        """The task's ``EvalResult`` on ``split`` (it reads as the mapping of the metrics), with the
        task's baselines scored on the same split (classify: majority class, TF-IDF + LR). Writes
        ``eval-<split>.json`` (metrics, notes, baselines, and the ``overrides`` it was opened with, if
        any), ``hyps-<split>.txt`` for a task that generates text, and the task's figures into
        ``plots/``; their paths are in the result."""
        if not isinstance(split, str):
            raise UserError(f"evaluate: split={split!r}: the name of one split, e.g. 'test'")
        self.task.ensure_data(self.run_dir / "model")
        result = self.task.evaluate(self.model, split)
        result.baselines = self.task.baselines(split)
        if result.outputs is not None:
            result.artifacts["hyps"] = self.run_dir / f"hyps-{split}.txt"
        written = result.artifacts["eval"] = self.run_dir / f"eval-{split}.json"
        # Listed before written, as the trainer lists its files: --overwrite then clears them, a kill between or not.
        record_written(self.run_dir, *result.artifacts.values())
        if result.outputs is not None:
            result.artifacts["hyps"].write_text("".join(f"{line}\n" for line in result.outputs), encoding="utf-8")
        record = result.record() | ({"overrides": list(self.overrides)} if self.overrides else {})
        from heedful.explain.report import model_step

        if (step := model_step(self.run_dir)) is not None:  # the report tells a score of an older model
            record["model"] = {"step": step}
        written.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        result.figures = self.task.write_reports(split, self.run_dir / "plots", result)
        record_written(self.run_dir, *result.figures)  # a task's figures: named only once drawn
        return result

    def __getattr__(self, name: str) -> Any:
        """The task's own run methods (``Task.run_methods``), e.g. ``run.translate(lines, beam=5)``:
        ``task.<method>(model, …)``. A method another task offers is a one-line ``UserError``."""
        if name.startswith("_") or name in {"run_dir", "cfg", "task", "model"}:
            raise AttributeError(name)
        method = type(self.task).run_methods.get(name)
        if method is not None:
            return _bound(getattr(self.task, method), self.model)
        _refuse_other_tasks_method(name, f"{self.run_dir}: is {a_run(self.cfg.task)}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *type(self.task).run_methods]

    def report(self, path: str | Path | None = None, inputs: list[Any] | None = None) -> Path:
        """One self-contained HTML page (``run_dir/report.html`` unless ``path`` is given): config,
        curves, metrics beside baselines, ``inputs``' predictions with attention and rollout, and
        the faithfulness table where measured (``heedful report RUN``; explain/report.py)."""
        from heedful.explain.report import write_report

        if path is not None:  # never over the run's own files (as `heedful report --out` refuses)
            check_output(Path(path), "path", runs=[self.run_dir])
        written = write_report(self, Path(path) if path is not None else None, inputs)
        if path is None:
            record_written(self.run_dir, written)  # --overwrite clears it
        return written

    def show_attention(self, inputs: list[Any], out_dir: str | Path | None = None) -> list[Path]:
        """One attention heatmap PNG per input (in ``run_dir/plots`` unless ``out_dir`` is given)."""
        return self.plot_explanations(self.explain(inputs), out_dir)

    def plot_explanations(self, explanations: list[Any], out_dir: str | Path | None = None) -> list[Path]:
        """The heatmaps of :meth:`show_attention` for explanations already made by :meth:`explain`
        (``attention-0.png``, … in their order)."""
        out_dir = check_output_folder(Path(out_dir), "out_dir") if out_dir is not None else self.run_dir / "plots"
        return [self.task.plot_explanation(e, out_dir / f"attention-{i}.png") for i, e in enumerate(explanations)]


class NotARunMethod(UserError, AttributeError):
    """``run.<method>`` of another task's runs (e.g. ``generate`` on a translate run)."""


def _bound(method: Callable[..., Any], model: nn.Module) -> Callable[..., Any]:
    """``method`` with ``model`` given: a function whose name, docstring and signature are the
    method's, less ``model`` (``help(run.translate)`` shows translate's own help)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return method(model, *args, **kwargs)

    functools.update_wrapper(call, method)
    signature = inspect.signature(method)
    call.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    del call.__wrapped__  # or inspect would read the method's own signature, model included
    return call


def _refuse_other_tasks_method(name: str, what: str) -> None:
    """A run method another task offers is a one-line ``NotARunMethod`` naming the task it needs."""
    owners = [c.name for c in all_task_classes() if name in c.run_methods]
    if owners:
        raise NotARunMethod(f"{what}; {name} needs {article(owners[0])} {owners[0]} run")


@dataclass
class Ensemble:
    """Runs used together. Classifiers average their class probabilities: each hears an input
    its own way (its own features, vocabulary, trim), then the mean of their probabilities picks
    the class; the runs must predict the same classes (speech runs with a classifier head,
    classify runs). A task that decodes as an ensemble (translate: next-token log-probabilities
    averaged inside greedy and beam search) gives one ``model`` of the members instead
    (``Task.ensemble_model``), used wherever one run's model is: ``ensemble.translate(lines)``."""

    runs: list[Run]
    model: nn.Module | None = None  # the members as one model, for tasks that decode as an ensemble

    def __post_init__(self) -> None:
        if not self.runs:
            raise UserError("an ensemble needs at least one run")
        tasks = {run.cfg.task for run in self.runs}
        if len(tasks) > 1:
            raise UserError(f"an ensemble's runs must be of one task; these are {', '.join(sorted(tasks))}")
        first = self.runs[0].task
        if type(first).ensemble_model is not Task.ensemble_model:
            self.model = first.ensemble_model([run.model for run in self.runs], [run.task for run in self.runs])
            return
        for run in self.runs:  # no inputs: only whether the run can give class probabilities at all
            try:
                run.task.class_probabilities(run.model, [])
            except UserError as exc:
                raise UserError(f"{run.run_dir}: {exc}") from None

    def member_probabilities(self, inputs: list[Any], progress: bool = False) -> tuple[list[Tensor], list[str]]:
        """Each member's class probabilities, (N, C) apiece, and the C class names they share."""
        from tqdm.auto import tqdm

        per_run, classes, inputs = [], None, input_list(inputs, "class_probabilities")
        for run in tqdm(self.runs, desc="ensemble", unit="run", disable=not progress):
            probs, names = run.task.class_probabilities(run.model, inputs)
            if classes is not None and names != classes:
                first_dir = self.runs[0].run_dir
                raise UserError(f"{run.run_dir}: predicts the classes {names}, not {classes} like {first_dir}")
            per_run.append(probs)
            classes = names
        return per_run, classes

    def class_probabilities(self, inputs: list[Any]) -> tuple[Tensor, list[str]]:
        """The members' class probabilities averaged, (N, C), and the C class names."""
        per_run, classes = self.member_probabilities(inputs)
        return torch.stack(per_run).mean(0), classes

    def evaluate(self, split: str = "test", progress: bool = False) -> EvalResult:
        """The averaged probabilities scored on a held-out split, with the first run's task's
        metrics, plus each member's accuracy (``member_<i>_accuracy``, i from 1). Every member
        must hold out the same examples (for a speech fold: the same held-out speaker; a review
        split also depends on the seed). Written to the first run's directory as
        ``eval-<split>-ensemble.json``, naming the members; figures go to ``plots/ensemble``."""
        first = self.runs[0]
        if self.model is not None:  # one model of the members, scored like any run's model
            first.task.ensure_data(first.run_dir / "model")
            result = first.task.evaluate(self.model, split)
            path = result.artifacts["eval"] = first.run_dir / f"eval-{split}-ensemble.json"
            record = {"members": [str(run.run_dir) for run in self.runs], **result.record()}
            path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
            record_written(first.run_dir, path)  # --overwrite clears it
            return result
        inputs = first.task.split_inputs(split)
        for run in self.runs[1:]:
            if run.task.split_inputs(split) != inputs:
                raise UserError(
                    f"{run.run_dir}: holds out other {split} examples than {first.run_dir} (other data settings "
                    "or seed; reviews: fix data.split_seed); an ensemble is scored on examples every member held out"
                )
        per_run, _ = self.member_probabilities(inputs, progress)
        members = {f"member_{i}_accuracy": first.task.score_probabilities(split, p)["accuracy"]
                   for i, p in enumerate(per_run, 1)}  # fmt: skip
        result = first.task.score_probabilities(split, torch.stack(per_run).mean(0))
        result.metrics |= members
        result.baselines = first.task.baselines(split)  # the members share their training rows
        path = result.artifacts["eval"] = first.run_dir / f"eval-{split}-ensemble.json"
        record = {"members": [str(run.run_dir) for run in self.runs], **result.record()}
        path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
        result.figures = first.task.write_reports(split, first.run_dir / "plots" / "ensemble", result)
        record_written(first.run_dir, path, *result.figures)  # --overwrite clears them
        return result

    def predict(self, inputs: list[Any]) -> list[Prediction]:
        """Per input: the class with the highest mean probability, and that probability (as the
        task reports it: a review's prediction also lists every class's mean probability)."""
        inputs = input_list(inputs, "predict")
        if self.model is not None:
            return self.runs[0].task.predict(self.model, inputs)
        probs, classes = self.class_probabilities(inputs)
        return self.runs[0].task.predictions(inputs, probs, classes)

    def __getattr__(self, name: str) -> Any:
        """The task's run methods with the members as one model: ``ensemble.translate(lines, beam=5)``."""
        if name.startswith("_") or name in {"runs", "model"}:
            raise AttributeError(name)
        method = type(self.runs[0].task).run_methods.get(name)
        if method is not None and self.model is not None:
            return _bound(getattr(self.runs[0].task, method), self.model)
        task = self.runs[0].cfg.task
        if method is not None:  # classifiers average probabilities: there is no one model to decode with
            raise NotARunMethod(f"an ensemble of {task} runs averages class probabilities; it has no {name}")
        _refuse_other_tasks_method(name, f"an ensemble of {task} runs")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __repr__(self) -> str:
        return f"Ensemble({[str(run.run_dir) for run in self.runs]!r}, task={self.runs[0].cfg.task!r})"


def load_ensemble(run_dirs: list[str | Path], device: str = "auto") -> Ensemble:
    """Open several run directories (``load_run`` each, on ``device``: "auto", "cpu", "cuda",
    "cuda:N") as one ``Ensemble``."""
    return Ensemble([load_run(run_dir, device) for run_dir in input_list(run_dirs, "load_ensemble")])


def _export_kind(record: Path) -> str:
    """What an export's ``export.json`` says it is: "a CTranslate2 export of runs/x", in words."""
    try:
        fields = json.loads(record.read_text(encoding="utf-8"))
        kind = {"ctranslate2": "a CTranslate2 export", "onnx": "an ONNX export"}.get(fields.get("format"), "an export")
        return f"{kind} of {fields['source']}" if fields.get("source") else kind
    except (ValueError, AttributeError, OSError):
        return "an export"


def _trained_settings(data: dict[str, Any]) -> dict[str, str]:
    """The keys the run's task fixes at training (``Task.trained_settings``) -> the task's name;
    none where the config (``data``, as read) names no task heedful knows (load_config says what is
    wrong with it)."""
    task = data.get("task")
    try:
        return dict.fromkeys(get_task(task).trained_settings, task) if isinstance(task, str) else {}
    except UserError:
        return {}


def load_run(run_dir: str | Path, device: str = "auto", overrides: list[str] | None = None) -> Run:
    """Open a run directory written by ``fit``/``heedful train``: its config, vocabulary and best
    model, on ``device`` ("auto": a GPU if there is one, "cpu", "cuda", "cuda:N"). ``overrides``
    ("decode.beam_size=1", …) change how it is used, not what was trained."""
    if not isinstance(run_dir, str | Path):
        raise UserError(f"load_run: run_dir={run_dir!r}: a run directory (str or Path)")
    overrides = override_list(overrides)
    run_dir = Path(run_dir)
    if (run_dir / EXPORT_RECORD).is_file():  # `heedful export` wrote it
        raise CheckpointError(f"{run_dir}: {_export_kind(run_dir / 'export.json')}, not a run directory; give the run "
                              "it came from (docs/OPTIMIZE.md, 'Export', says what reads an export)")  # fmt: skip
    if not (run_dir / "config.yaml").is_file():
        missing = "no config.yaml" if run_dir.is_dir() else "a file" if run_dir.exists() else "no such folder"
        raise CheckpointError(f"{run_dir}: not a run directory ({missing}) — train one with `heedful train`")
    if not (run_dir / "model").is_dir():
        kept = list_checkpoints(run_dir / "checkpoints")
        way = (
            f"`{resume_command(run_dir)}` continues it from {kept[-1].name}"
            if kept
            else "no checkpoint either: it stopped before its first; train it again (--overwrite)"
        )
        raise CheckpointError(f"{run_dir}: has no trained model yet (no model/ folder); {way}")
    data = read_yaml(run_dir / "config.yaml")  # once: the checks below and the config both read it
    trained = _trained_settings(data) if overrides else {}
    for item in overrides or []:
        key = item.partition("=")[0].strip()
        if key in ("task", "model") or key.startswith("model."):  # model/config.json is what loads
            raise ConfigError(f"--set {item}: {key} is fixed when a run is trained; --set here changes how "
                              "it reads inputs or decodes (data.*, decode.*)")  # fmt: skip
        if key == "device":  # the device argument (--device) places the model; this would be ignored
            raise ConfigError(f"--set {item}: give the device as --device (Python: load_run(..., device=...))")
        if key == "run_dir":  # the run is the folder it is loaded from; another would be read nowhere
            raise ConfigError(f"--set {item}: the run is the folder given ({run_dir}); give another run's folder "
                              "instead")  # fmt: skip
        if key in trained:  # e.g. the sample rate a speech model's features were made at
            raise ConfigError(f"--set {item}: {key} is fixed when a {trained[key]} run is trained; the model "
                              "would get inputs unlike those it learnt from")  # fmt: skip
    # The run lies where it was loaded from, whatever run_dir its config.yaml remembers (runs move
    # and copy), as load_config of a run directory says: run.cfg.run_dir is run.run_dir.
    data["run_dir"] = str(run_dir)
    cfg = config_from_data(data, run_dir / "config.yaml", overrides)
    task = get_task(cfg.task)(cfg)
    task.check_model_folder(run_dir / "model")
    try:
        task.load_artifacts(run_dir / "model")  # imagegen's feature classifier has its sum checked too
        model = task.load_model(run_dir / "model", str(resolve_device(device)))
    except ChangedWeights as exc:  # the run directory knows what can put the file back
        hint = restore_model_hint(run_dir, exc.recorded if exc.weights.name == "model.safetensors" else None)
        raise ChangedWeights(exc.weights, exc.recorded, hint, exc.recorded_in) from None
    model.eval()
    return Run(run_dir, cfg, task, model, tuple(overrides or ()))
