"""Low-rank factorization (the seed's "matrix decomposition"): chosen Linear layers of a run's
model replaced by two thinner ones from a truncated SVD (``heedful.nn.lowrank``), the rank of
each chosen by an energy threshold or a target size, then optionally a short fine-tuning.

A Linear tied to an embedding (a decoder's output projection sharing the vocabulary table) is
left whole unless ``untie`` is given: factorizing it unties the two, the embedding keeping its
full table for the lookup and the projection becoming its own thinner pair. The model holds more
parameters then (the table once, plus the pair), but a decoding step's largest matmul — the
d_model → vocabulary projection, about 40 % of a Multi30k decoder step's multiply-adds — shrinks,
which is where the time goes."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from torch import nn

from heedful.nn.lowrank import factorize, rank_for_energy, replace_module, singular_values
from heedful.optimize.common import OptimizeError, fine_tune, option

if TYPE_CHECKING:
    from heedful.runs import Run


def tied_linears(model: nn.Module) -> set[str]:
    """Linears whose weight is also another module's (a decoder output tied to its embedding):
    factorizing one would untie them."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name.rpartition(".")[0])
    return {owner for names in owners.values() if len(names) > 1 for owner in names}


def choose_ranks(
    model: nn.Module, *, energy: float | None, size: float | None, layers: str | None, untie: bool = False
) -> dict[str, int]:
    """Linear name -> rank, for every Linear (whose name contains ``layers``, when given; tied to
    an embedding only with ``untie``) that the rank makes smaller: by ``energy`` (share of Σσ²
    kept) or ``size`` (the pair's parameters as a share of the layer's)."""
    if (energy is None) == (size is None):
        raise OptimizeError(f"low-rank: give one of {option('energy')}, e.g. 0.9, or {option('size')}, e.g. 0.5")
    if energy is not None and not 0 < energy <= 1:
        raise OptimizeError(f"{option('energy', energy)}: must be in (0, 1]")
    if size is not None and not 0 < size < 1:
        raise OptimizeError(f"{option('size', size)}: must be in (0, 1)")
    tied = set() if untie else tied_linears(model)
    ranks = {}
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or name in tied or (layers and layers not in name):
            continue
        out_f, in_f = module.weight.shape
        if energy is not None:
            rank = rank_for_energy(singular_values(module), energy)
        else:
            rank = int(size * in_f * out_f / (in_f + out_f))
        if rank >= 1 and rank * (in_f + out_f) < in_f * out_f:  # only where the pair is smaller
            ranks[name] = rank
    return ranks


def low_rank(
    run: Run,
    *,
    energy: float | None = None,
    size: float | None = None,
    layers: str | None = None,
    untie: bool = False,
    fine_tune_steps: int = 0,
    lr: float = 1e-4,
) -> tuple[nn.Module, dict[str, Any]]:
    """The run's model with its chosen Linears factorized (a copy), and what was done; with
    ``untie``, Linears tied to an embedding too (see the module docstring)."""
    model = run.model
    if any(step.get("method") == "int8" for step in getattr(model, "optimized", [])):
        raise OptimizeError(f"{run.run_dir}: its model is int8; factorize the float model, then quantize")
    ranks = choose_ranks(model, energy=energy, size=size, layers=layers, untie=untie)
    if not ranks:
        raise OptimizeError(
            f"{run.run_dir}: no Linear layer{f' named *{layers}*' if layers else ''} gets smaller at that rank"
        )
    model = copy.deepcopy(model)
    for name, rank in ranks.items():
        replace_module(model, name, factorize(model.get_submodule(name), rank))
    losses = fine_tune(run, model, fine_tune_steps, lr)
    step = {"method": "low_rank", "ranks": ranks}
    model.optimized = [*getattr(run.model, "optimized", []), step]
    # every option as given, and what --untie did: the tied Linears it factorized (none, e.g., under --layers ff)
    untied = sorted(set(ranks) & tied_linears(run.model))
    record = {**step, "energy": energy, "size": size, "layers": layers, "untie": untie, "untied": untied,
              "fine_tune_steps": fine_tune_steps, "lr": lr}  # fmt: skip
    if losses:
        record["fine_tune_loss"] = [losses[0], losses[-1]]
    return model.eval(), record
