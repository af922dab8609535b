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

from torch import nn

from heedful.config import read_yaml
from heedful.errors import CheckpointError, a_run
from heedful.models.pretrained import ChangedWeights, load_weights_checked, read_model_config, verify_weights
from heedful.train.rundir import restore_model_hint


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
    except ChangedWeights as exc:  # the run it came from knows what can put the file back
        restored = ChangedWeights(
            exc.weights, exc.recorded, restore_model_hint(folder.parent, exc.recorded), exc.recorded_in
        )
        raise CheckpointError(f"train.init_from: {restored}") from None
    except CheckpointError as exc:
        raise CheckpointError(f"train.init_from: {exc}") from None
