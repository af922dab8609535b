"""Is an explanation faithful? ERASER's erasure tests (DeYoung et al. 2020, §4).

An explanation ranks an input's units (tokens, frames, pixels) from most to least important.
Remove the top k % of units and see how much the probability of the predicted class drops:

    comprehensiveness(k) = p(ŷ | x) − p(ŷ | x without its top k %)    (high: the top units mattered)
    sufficiency(k)       = p(ŷ | x) − p(ŷ | only its top k %)          (low: they were enough)

each averaged over k ∈ {1, 5, 10, 20, 50} % (AOPC, "area over the perturbation curve"), and
over the inputs. The same numbers for random rankings (mean and spread over several draws)
say what no knowledge at all scores; an explanation is worth something when it beats them.
k % of n units is ⌈k·n/100⌉, so even the 1 % bin removes one unit.

The functions know no model: ``score`` maps a batch of (reduced) inputs to the probability of
each input's originally predicted class, and ``reduce`` makes the reduced input (by default the
units left, in order: ERASER deletes tokens).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)
Score = Callable[[list[Any]], Tensor]  # reduced inputs -> (N,) probability of each one's predicted class


def delete_units(units: Sequence[Any], keep: Sequence[bool]) -> list[Any]:
    """ERASER's removal: the units kept, in order."""
    return [u for u, k in zip(units, keep, strict=True) if k]


def ranking(weights: Sequence[float] | Tensor) -> list[int]:
    """Unit indices from most to least important (ties: the earlier unit first)."""
    values = weights.tolist() if isinstance(weights, Tensor) else list(weights)
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


@dataclass
class Erasure:
    """AOPC comprehensiveness and sufficiency of one ranking method, with the per-fraction means."""

    comprehensiveness: float
    sufficiency: float
    by_fraction: dict[float, tuple[float, float]] = field(default_factory=dict)  # k -> (comp., suff.)


def erasure(
    score: Score,
    inputs: Sequence[Sequence[Any]],
    rankings: Sequence[Sequence[int]],
    *,
    fractions: Sequence[float] = FRACTIONS,
    reduce: Callable[[Sequence[Any], Sequence[bool]], Any] = delete_units,
    batch_size: int = 64,
) -> Erasure:
    """Comprehensiveness and sufficiency (AOPC over ``fractions``) of ``rankings`` (per input, its
    unit indices, most important first), averaged over ``inputs``."""
    if len(inputs) != len(rankings):
        raise ValueError(f"{len(inputs)} inputs but {len(rankings)} rankings")
    for n, (x, order) in enumerate(zip(inputs, rankings, strict=True)):
        if sorted(order) != list(range(len(x))):
            raise ValueError(f"ranking {n} is not an order of its input's {len(x)} units: {list(order)[:8]}…")
    full = _batched(score, [reduce(x, [True] * len(x)) for x in inputs], batch_size)  # (N,)
    comp, suff = torch.zeros(len(fractions)), torch.zeros(len(fractions))
    for f, fraction in enumerate(fractions):
        without, only = [], []
        for x, order in zip(inputs, rankings, strict=True):
            top = set(order[: max(1, math.ceil(fraction * len(x)))])
            without.append(reduce(x, [i not in top for i in range(len(x))]))
            only.append(reduce(x, [i in top for i in range(len(x))]))
        comp[f] = (full - _batched(score, without, batch_size)).mean()
        suff[f] = (full - _batched(score, only, batch_size)).mean()
    by_fraction = {k: (float(c), float(s)) for k, c, s in zip(fractions, comp, suff, strict=True)}
    return Erasure(float(comp.mean()), float(suff.mean()), by_fraction)


def _batched(score: Score, inputs: list[Any], batch_size: int) -> Tensor:
    return torch.cat([score(inputs[i : i + batch_size]).float().cpu() for i in range(0, len(inputs), batch_size)])


def random_rankings(lengths: Sequence[int], seed: int) -> list[list[int]]:
    """One random order of each input's units (reproducible from ``seed``)."""
    rng = random.Random(seed)
    return [rng.sample(range(n), n) for n in lengths]


def faithfulness_table(
    score: Score,
    inputs: Sequence[Sequence[Any]],
    methods: dict[str, Sequence[Sequence[int]]],
    *,
    draws: int = 5,
    seed: int = 0,
    **options: Any,
) -> dict[str, dict[str, float]]:
    """Per method (name -> rankings), and for ``random`` over ``draws`` random rankings: AOPC
    comprehensiveness and sufficiency; random also gets the standard deviation over draws, and
    each method its comprehensiveness as a multiple of random's (``comp_vs_random``)."""
    if draws < 1:
        raise ValueError("random rankings need at least one draw")
    lengths = [len(x) for x in inputs]
    randoms = [erasure(score, inputs, random_rankings(lengths, seed + d), **options) for d in range(draws)]
    comp = [r.comprehensiveness for r in randoms]
    suff = [r.sufficiency for r in randoms]
    table = {
        "random": {
            "comprehensiveness": statistics.fmean(comp),
            "comprehensiveness_sd": statistics.stdev(comp) if draws > 1 else 0.0,
            "sufficiency": statistics.fmean(suff),
            "sufficiency_sd": statistics.stdev(suff) if draws > 1 else 0.0,
        }
    }
    base = table["random"]["comprehensiveness"]
    for name, rankings in methods.items():
        result = erasure(score, inputs, rankings, **options)
        table[name] = {
            "comprehensiveness": result.comprehensiveness,
            "sufficiency": result.sufficiency,
            "comp_vs_random": result.comprehensiveness / base if base > 0 else math.inf,
        }
    return table
