"""The Fréchet distance between two Gaussians fitted to feature vectors (Heusel et al. 2017):

    d² = ‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁ Σ₂)^½)

With Inception features it is the FID; heedful uses the features of a small classifier trained on
the real images (a *domain* FID — nothing to download). The trace of the matrix square root is
computed from symmetric eigendecompositions in float64: tr((Σ₁Σ₂)^½) = Σ √λ(A Σ₂ A) with A = Σ₁^½,
which is real and stable for positive semi-definite Σ (where scipy's ``sqrtm`` of the
non-symmetric product may return tiny imaginary parts).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """(N, D) features -> mean (D,) and covariance (D, D), unbiased, in float64."""
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors as an (N, D) tensor, got shape {tuple(features.shape)}")
    x = features.detach().to(torch.float64)
    mu = x.mean(0)
    centred = x - mu
    return mu, centred.T @ centred / (x.shape[0] - 1)


def _psd_sqrt(matrix: Tensor) -> Tensor:
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    mu1, mu2 = mu1.to(torch.float64), mu2.to(torch.float64)
    sigma1, sigma2 = sigma1.to(torch.float64), sigma2.to(torch.float64)
    root1 = _psd_sqrt(sigma1)
    inner = root1 @ sigma2 @ root1
    trace_sqrt = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu1 - mu2).square().sum() + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt
    return float(distance.clamp(min=0))


class FeatureClassifier(nn.Module):
    """A small CNN; its 128-d penultimate layer gives the domain-FID features (the imagegen task
    trains it on the real training images and reports its held-out accuracy beside the FID)."""

    def __init__(self, channels: int, size: int, n_classes: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(64 * (size // 4) ** 2, 128), nn.ReLU())
        self.head = nn.Linear(128, n_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """images (B, C, R, R) -> features (B, 128), logits (B, classes)."""
        f = self.features(self.conv(x))
        return f, self.head(f)
