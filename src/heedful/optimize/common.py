"""What every optimization shares: checking the output folder, writing the optimized run
directory, and a short fine-tuning loop on the task's own loss.

An optimized run is a run directory like the one it came from — the same ``config.yaml``, a
``model/`` folder with the task's vocabulary files and the optimized ``config.json`` +
``model.safetensors`` — so ``load_run``, ``heedful translate/predict/evaluate`` read it
unchanged; ``optimize.json`` beside them says what was done, from which run, with which options.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import nn

from heedful.config import read_yaml
from heedful.errors import UserError
from heedful.outputs import EXPORT_RECORD
from heedful.tasks.base import EvalResult, input_list

if TYPE_CHECKING:
    from heedful.runs import Run

RECORD_NAME = "optimize.json"


class OptimizeError(UserError):
    """An optimization that cannot be made: the run's model has no such part, a bad option."""


_NO_VALUE = object()


def option(name: str, value: Any = _NO_VALUE, *, flag: str | None = None) -> str:
    """An option as both the Python API and the CLI spell it, for a message either may show:
    ``option("lr", -1.0)`` is "lr=-1.0 (--lr)", ``option("fine_tune_steps")`` is
    "fine_tune_steps (--fine-tune-steps)"; ``flag``: a flag named otherwise than the argument."""
    flag = flag or "--" + name.replace("_", "-")
    return f"{name} ({flag})" if value is _NO_VALUE else f"{name}={value!r} ({flag})"


# What an optimization or an export writes at the top of its folder: the mark --overwrite looks for.
OUTPUT_RECORDS = (RECORD_NAME, EXPORT_RECORD)


def given_run(run: Any, function: str) -> None:
    """A one-line refusal of anything but an opened run (a path was met by an AttributeError)."""
    if run is None or isinstance(run, str | bytes | os.PathLike) or not hasattr(run, "cfg"):
        raise OptimizeError(f"{function} takes a run opened by load_run('runs/…'), not {run!r:.40}")


def check_out_dir(out: Path, run_dir: Path, overwrite: bool = False, *, inside_run: bool = False) -> Path:
    """The output folder must be new (or empty) and not the run itself — or, with ``overwrite``, a
    folder an earlier optimization or export wrote (it holds optimize.json or export.json), which
    :func:`staged` replaces once the new one is complete. Nothing else is ever overwritten."""
    out = Path(out)
    if out.resolve() == Path(run_dir).resolve() or out.resolve() in Path(run_dir).resolve().parents:
        raise OptimizeError(f"{out}: is (or holds) the run {run_dir} itself; give another {option('out')} folder")
    if not inside_run and Path(run_dir).resolve() in out.resolve().parents:  # retraining would delete it
        raise OptimizeError(f"{out}: is inside the run {run_dir}; give a folder outside it")
    blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocking is not None:
        raise OptimizeError(f"{out}: {blocking} is a file, not a folder; give another {option('out')} folder")
    if out.exists() and not out.is_dir():
        raise OptimizeError(f"{out}: is a file; give a new {option('out')} folder")
    if out.exists() and any(out.iterdir()):
        ours = out.is_dir() and any((out / name).is_file() for name in OUTPUT_RECORDS)
        if not overwrite:
            hint = f" (or {option('overwrite')}: an earlier optimize or export wrote it)" if ours else ""
            raise OptimizeError(f"{out}: exists and is not empty; give a new {option('out')} folder{hint}")
        if not ours:
            raise OptimizeError(
                f"{out}: {option('overwrite')} replaces only what heedful optimize or export wrote (a folder with "
                f"{' or '.join(OUTPUT_RECORDS)}), and this is not one; give a new {option('out')} folder"
            )
    return out


def write_run(run: Run, model: nn.Module, out: Path, record: dict[str, Any], overwrite: bool = False) -> Path:
    """``out`` as a run directory holding ``model``: the run's config.yaml (named NAME-METHOD), its
    model folder's vocabulary files, the model (config.json + model.safetensors) and ``optimize.json``."""
    out = check_out_dir(out, run.run_dir, overwrite)
    with staged(out) as tmp:
        (tmp / "model").mkdir()
        write_config_named(run, tmp / "config.yaml", record["method"].replace("_", "-"))
        for path in (run.run_dir / "model").iterdir():  # tokenizers, vocabularies: everything but the weights
            if path.is_file() and path.name not in ("config.json", "model.safetensors"):
                shutil.copy2(path, tmp / "model" / path.name)
        model.save_pretrained(tmp / "model")
        payload = {"source": str(run.run_dir), **record}
        (tmp / RECORD_NAME).write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n")
    return out


def write_config_named(run: Run, path: Path, suffix: str) -> None:
    """The run's config.yaml at ``path``, named NAME-SUFFIX ("dates-int8", "dates-onnx"): serving
    an optimized or exported run beside the run it came from needs two names."""
    config = read_yaml(run.run_dir / "config.yaml")
    config["name"] = f"{config.get('name', 'run')}-{suffix}"  # 'run': RunConfig's default name
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary sibling folder to write ``out``'s files into: renamed to ``out`` only when the
    block completes, removed whatever happens — so a failed optimization or export leaves nothing
    behind. An ``out`` that exists (empty, or an earlier output that ``check_out_dir`` let
    --overwrite replace) is set aside at that moment and removed after the rename."""
    tmp = out.with_name(f".{out.name}.tmp")
    old = out.with_name(f".{out.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def count_parameters(model: nn.Module) -> int:
    """Parameters a model holds, int8 weights included (``quantize_dynamic`` hides them from
    ``parameters()``)."""
    from heedful.nn.int8 import int8_tensors

    if any(step.get("method") == "int8" for step in getattr(model, "optimized", [])):
        return sum(
            t.numel()
            for name, t in int8_tensors(model).items()
            if not name.endswith((".scale", ".zero_point", ".row_scale"))
        )
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def training_batches(run: Run, n: int) -> list[Any]:
    """The first ``n`` batches of the run's training data (epoch 0), as its task's loss takes them."""
    run.task.ensure_data(run.run_dir / "model")
    return list(itertools.islice(run.task.data.train.batches(0), n))


def training_stream(run: Run) -> Iterator[Any]:
    """The run's training batches epoch after epoch, each epoch in its own order, as the trainer
    sees them: a long fine-tuning meets all the data instead of the same first batches again."""
    run.task.ensure_data(run.run_dir / "model")
    for epoch in itertools.count():
        yield from run.task.data.train.batches(epoch)


def fine_tune(run: Run, model: nn.Module, steps: int, lr: float, stream: Iterator[Any] | None = None) -> list[float]:
    """``steps`` Adam steps of the task's own loss on its training data (a short repair after a
    structural change, not a training run) at the run's ``train.precision`` (bf16 autocast for
    the Multi30k configs, as they were trained), with a progress bar; returns the losses.

    The batches come from ``stream`` (default: a new :func:`training_stream`, from epoch 0); a
    caller that fine-tunes in rounds passes one stream to every round, so each round goes on
    where the last one stopped instead of meeting the same first batches again.

    A run trained with ``train.ema_decay`` is judged by its weight average, not by its last
    weights (on the 60-minute Multi30k run the average scores 39.19 BLEU, its last raw
    checkpoint 38.03), so its repair ends the same way: ``model`` gets the average of the
    fine-tuning's weights (``WeightAverage``, with its warm-up), not the last step's."""
    from tqdm.auto import tqdm

    from heedful.device import autocast, move_to
    from heedful.train.ema import WeightAverage

    if steps <= 0:
        return []
    torch.manual_seed(run.cfg.seed)
    device = next(model.parameters()).device
    precision = getattr(run.cfg.train, "precision", "fp32")
    ema_decay = getattr(run.cfg.train, "ema_decay", None)
    average = WeightAverage(model, ema_decay) if ema_decay else None
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    model.train()
    progress = tqdm(total=steps, desc="fine-tuning", unit="step", disable=not getattr(run.cfg.train, "progress", True))
    with progress:
        for batch in itertools.islice(training_stream(run) if stream is None else stream, steps):
            with autocast(device, precision):
                loss, _ = run.task.loss(model, move_to(batch, device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if average is not None:
                average.update(model)
            losses.append(float(loss.detach()))
            progress.update()
            progress.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    if average is not None:
        average.copy_to(model)
    model.eval()
    return losses


def exported_task(files: Path, overrides: list[str] | None = None) -> tuple[Any, Any]:
    """The config and the task (tokenizers loaded) of the run an export came from, from the copies
    of its config.yaml and tokenizer files in ``files``: what an export needs to translate alone."""
    from heedful.tasks.registry import get_task, load_config

    cfg = load_config(files / "config.yaml", overrides)
    task = get_task(cfg.task)(cfg)
    task.load_artifacts(files)
    return cfg, task


def is_export(folder: str | Path) -> bool:
    """Whether ``folder`` is an export (``heedful export`` wrote its ``export.json``), not a run directory."""
    return (Path(folder) / EXPORT_RECORD).is_file()


class ExportedModel:
    """An export folder opened on its own, standing in for a ``Run`` where the run's weights are
    not needed: ``cfg`` and ``task`` are the run's (from the copies the export carries),
    ``predict`` answers as ``run.predict`` does and ``evaluate`` scores those predictions — what
    ``heedful predict``, ``heedful evaluate`` and ``heedful serve`` call. An export keeps no
    attention to explain: ``explain`` refuses in one line. Subclasses set ``folder``, ``files``,
    ``cfg``, ``task``, ``runtime`` (what computes: "onnxruntime", "ctranslate2") and ``predict``."""

    runtime: str
    folder: Path
    files: Path  # where the run's config.yaml and tokenizer files are (in the export)
    cfg: Any
    task: Any

    @property
    def run_dir(self) -> Path:
        """Where it was opened from, the name messages give it (as ``Run.run_dir``)."""
        return self.folder

    def predict(self, inputs: list[Any]) -> list[Any]:
        raise NotImplementedError

    def evaluate(self, split: str = "test") -> EvalResult:
        """What the export ships, scored on the run's held-out ``split`` (``heedful evaluate DIR``):
        the task's metrics from this export's own predictions, with the task's baselines, as
        ``Run.evaluate`` gives them — less what needs the model's weights (a translator's
        teacher-forced loss). Nothing is written: the folder is what ships."""
        self.task.ensure_data(self.files)
        result = self._scored(split)
        result.baselines = self.task.baselines(split)
        return result

    def _scored(self, split: str) -> EvalResult:
        return self.task.score_predictions(split, self.predict(self.task.split_inputs(split)))

    def explain(self, inputs: list[Any]) -> list[Any]:
        raise OptimizeError(
            f"{self.folder}: an export ({self.runtime}) keeps no attention to explain; explain the run it came from"
        )


class ExportedTranslator(ExportedModel):
    """A translator's export (ONNX or CTranslate2): ``predict`` is ``translate`` at the run's
    decoding settings, as ``run.predict`` is for a translate run. Subclasses give ``translate``."""

    def predict(self, inputs: list[Any]) -> list[Any]:
        return self.translate(input_list(inputs, "predict"))

    def translate(self, lines: list[str], **options: Any) -> list[Any]:
        raise NotImplementedError


def runtime_reason(exc: Exception) -> str:
    """Why onnxruntime or CTranslate2 refused a file, in a few words: their messages repeat the
    path and an error code ("[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from X
    failed:Protobuf parsing failed."); what follows the last "failed:" is the reason."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text.rsplit("failed:", 1)[-1].strip() or text


def read_export_record(folder: Path) -> dict[str, Any]:
    """``FOLDER/export.json``, the record every export writes (one-line errors when it is not there or unreadable)."""
    path = folder / EXPORT_RECORD
    if not path.is_file():
        raise OptimizeError(f"{folder}: not an export folder (no {EXPORT_RECORD}); `heedful export` writes one")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OptimizeError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(record, dict):
        raise OptimizeError(f"{path}: expected a JSON object")
    return record
