"""``train.init_from: RUN_DIR``: fine-tuning starts from another run's saved model.

The run's ``model/`` folder (its best model, the weight average where it kept one) gives the
weights, loaded before step 0, and its vocabulary files (``Task.load_artifacts``), so the new
run speaks the same ids. The new model is built from the new config; every tensor must have the
shape it has there: one that does not, or a name one side lacks, is a one-line
``CheckpointError`` (an architecture change is a new run, not a fine-tuning). A model whose
structure ``heedful optimize`` changed (pruned heads, low-rank Linears, int8) is refused too; an
averaged one (only its weights changed) is a start like any other. Resuming a fine-tuning run
reads its own checkpoint and takes only the vocabulary from ``init_from`` again.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from heedful.config import read_yaml
from heedful.errors import CheckpointError, a_run
from heedful.models.pretrained import (
    WEIGHTS_NAME,
    ChangedWeights,
    load_weights_checked,
    read_model_config,
    verify_weights,
)
from heedful.train.rundir import restore_model_hint

if TYPE_CHECKING:
    from heedful.tasks.base import Task


def init_model_folder(run_dir: Path, task_name: str) -> Path:
    """``run_dir/model``, checked: a finished run of the same task."""
    config, folder = run_dir / "config.yaml", run_dir / "model"
    if not config.is_file():
        raise CheckpointError(f"train.init_from: {run_dir}: not a run directory (no config.yaml)")
    if not (folder / "model.safetensors").is_file():
        raise CheckpointError(f"train.init_from: {run_dir}: has no saved model yet (no model/model.safetensors)")
    other = read_yaml(config).get("task")
    if other != task_name:
        raise CheckpointError(f"train.init_from: {run_dir}: is {a_run(other)}; this run is {task_name!r}")
    return folder


def load_initial_weights(model: nn.Module, folder: Path) -> None:
    """Load ``folder/model.safetensors`` into ``model`` in place, refusing any shape or name that differs."""
    weights = folder / "model.safetensors"
    config = read_model_config(folder)
    steps = [str(step.get("method")) for step in config.get("optimized", [])]
    changed = [method for method in steps if method != "average"]  # as structural_steps counts them
    if changed:
        raise CheckpointError(
            f"train.init_from: {folder}: holds a model whose structure heedful optimize changed "
            f"({', '.join(changed)}); start from the run it came from"
        )
    try:
        verify_weights(folder, config)
        load_weights_checked(model, weights, "this run's model")
    except CheckpointError as exc:
        raise _refused(exc, folder) from None


def load_initial_artifacts(task: Task, folder: Path) -> None:
    """``task.load_artifacts(folder)`` (the vocabulary; imagegen's feature classifier, its sum
    checked), a refusal prefixed ``train.init_from:`` as the weights' is: the folder named is the
    other run's, not this one's."""
    try:
        task.load_artifacts(folder)
    except CheckpointError as exc:
        raise _refused(exc, folder) from None


def _refused(exc: CheckpointError, folder: Path) -> CheckpointError:
    """``exc`` as a ``train.init_from:`` refusal; a changed weights file says how to put it back."""
    if isinstance(exc, ChangedWeights):  # the run it came from knows what can put the file back
        # Only model.safetensors is kept in checkpoints; another file (the feature classifier) is written again.
        digest = exc.recorded if exc.weights.name == WEIGHTS_NAME else None
        exc = ChangedWeights(exc.weights, exc.recorded, restore_model_hint(folder.parent, digest), exc.recorded_in)
    return CheckpointError(f"train.init_from: {exc}")
