"""Make a trained run cheaper to run: int8, checkpoint averaging, low-rank factorization, head
pruning, sequence-level distillation into a smaller student (``heedful optimize RUN --method …
--out DIR``), each written as a run directory that ``load_run`` and every command read unchanged.

    run = load_run("runs/dates")
    optimize(run, "int8", "runs/dates-int8")                    # heedful optimize runs/dates --method int8 --out …
    optimize(run, "prune-heads", "runs/p", fraction=0.5, fine_tune_steps=100)
    optimize(teacher, "distill", "runs/student", beam=5, student_set=["model.d_model=192"])

Each method also exists on its own (``int8(run)``, ``average(run, last=5)``, ``low_rank(run,
energy=0.9)``, ``prune_heads(run, fraction=0.5)``), returning the optimized model in memory and
a record of what was done, without writing anything — except ``distill(run, out)``, which trains a
new model and so writes its run directory itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heedful.optimize.average import average, average_tensors
from heedful.optimize.common import OptimizeError, check_out_dir, count_parameters, given_run, option, write_run
from heedful.optimize.distill import distill
from heedful.optimize.lowrank import low_rank
from heedful.optimize.prune import head_importance, prune_heads
from heedful.optimize.quantize import int8

if TYPE_CHECKING:
    from heedful.runs import Run

# method name (as the CLI spells it) -> (function, the options it takes)
METHODS: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "int8": (int8, ()),
    "average": (average, ("last",)),
    "low-rank": (low_rank, ("energy", "size", "layers", "untie", "fine_tune_steps", "lr")),
    "prune-heads": (prune_heads, ("fraction", "rounds", "batches", "fine_tune_steps", "lr")),
    "distill": (distill, ("beam", "student_set")),  # writes its run directory itself (trains a student)
}

__all__ = [
    "METHODS",
    "OptimizeError",
    "average",
    "average_tensors",
    "count_parameters",
    "distill",
    "head_importance",
    "int8",
    "low_rank",
    "optimize",
    "prune_heads",
]


def optimize(run: Run, method: str, out: str | Path, *, overwrite: bool = False, **options: Any) -> Path:
    """Apply ``method`` to ``run``'s model and write the result as the run directory ``out``
    (new or empty; with ``overwrite``, also an earlier optimization's output, replaced once the new
    one is complete). Options a method does not take are refused, and nothing is written when
    anything is refused."""
    given_run(run, "optimize")
    if isinstance(method, str):
        method = method.replace("_", "-")  # optimize.json records low_rank, prune_heads
    if method not in METHODS:
        raise OptimizeError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    function, accepted = METHODS[method]
    given = {k: v for k, v in options.items() if v is not None}
    foreign = [k for k in given if k not in accepted]
    if foreign:
        # Named as both surfaces spell them: optimize(run, "int8", out, fraction=0.5) has no --fraction.
        named = ", ".join(option(k) for k in foreign)
        takes = ", ".join(option(k) for k in accepted) or "no options"
        raise OptimizeError(f"{option('method', method)} does not take {named} (it takes {takes})")
    lr, steps = given.get("lr"), given.get("fine_tune_steps")
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise OptimizeError(f"{option('lr', lr)}: a learning rate above 0")
    if steps is not None and steps < 0:
        raise OptimizeError(f"{option('fine_tune_steps', steps)}: 0 or more")
    if method == "distill":
        return distill(run, out, overwrite=overwrite, **given)
    out = check_out_dir(Path(out), run.run_dir, overwrite)  # before any work: a bad --out costs nothing
    model, record = function(run, **given)
    record["parameters"] = {"before": count_parameters(run.model), "after": count_parameters(model)}
    return write_run(run, model, out, record, overwrite)
