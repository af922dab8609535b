"""Low-rank factorization of a Linear layer by truncated SVD.

    W = U Σ Vᵀ  (out × in)   ≈   (U_r Σ_r^½) (Σ_r^½ V_rᵀ) = B A,   A: r × in,  B: out × r

so ``y = W x + b`` becomes ``y = B (A x) + b``: two thinner Linears with r·(in + out)
parameters instead of in·out, fewer whenever r < in·out / (in + out). By Eckart–Young the
truncation is the best rank-r approximation in Frobenius norm; at full rank it is W itself (up to
rounding). The rank is chosen by an energy threshold (the smallest r whose Σ_r keeps that share
of Σ σ²) or given.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LowRankLinear(nn.Module):
    """``second(first(x))``: in → rank (no bias) → out (with the original bias). Both are plain
    ``nn.Linear`` modules, so the pair quantizes like any other Linear."""

    def __init__(self, in_features: int, rank: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.rank, self.out_features = in_features, rank, out_features
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.first(x))  # (…, in) -> (…, r) -> (…, out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, rank={self.rank}, out_features={self.out_features}"


def singular_values(linear: nn.Linear) -> Tensor:
    """σ of the weight, largest first: (min(out, in),)."""
    return torch.linalg.svdvals(linear.weight.detach().double())


def rank_for_energy(sigma: Tensor, energy: float) -> int:
    """The smallest r with Σ_{i<r} σ_i² ≥ energy · Σ σ²."""
    squares = sigma.double() ** 2
    share = squares.cumsum(0) / squares.sum().clamp_min(1e-300)
    return int(min(int((share < energy - 1e-12).sum()) + 1, sigma.numel()))


def factorize(linear: nn.Linear, rank: int) -> LowRankLinear:
    """The rank-``rank`` truncated SVD of ``linear`` as a ``LowRankLinear`` (computed in float64)."""
    out_features, in_features = linear.weight.shape
    if not 1 <= rank <= min(out_features, in_features):
        raise ValueError(f"rank {rank} must be between 1 and {min(out_features, in_features)}")
    U, S, Vh = torch.linalg.svd(linear.weight.detach().double(), full_matrices=False)  # (o, k), (k,), (k, i)
    root = S[:rank].sqrt()
    low = LowRankLinear(in_features, rank, out_features, bias=linear.bias is not None)
    dtype, device = linear.weight.dtype, linear.weight.device
    with torch.no_grad():
        low.first.weight.copy_((root[:, None] * Vh[:rank]).to(dtype))  # (r, in)
        low.second.weight.copy_((U[:, :rank] * root[None, :]).to(dtype))  # (out, r)
        if linear.bias is not None:
            low.second.bias.copy_(linear.bias)
    return low.to(device)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule ``name`` (dotted) is."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
