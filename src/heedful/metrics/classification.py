"""Scores of class probabilities: accuracy, macro-F1, per-class precision and recall, MAE for
ordinal labels, expected calibration error, and per-group agreement (Spearman ρ) between the
predicted and the true mean class."""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from heedful.errors import UserError


def _sklearn():
    try:
        import sklearn.metrics
    except ImportError:
        raise UserError("classification metrics need scikit-learn: pip install 'heedful[classify]'") from None
    return sklearn.metrics


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """Σ_b (n_b / n) · |accuracy_b − confidence_b| over equal-width confidence bins."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in itertools.pairwise(edges.tolist()):
        inside = (confidence > lo) & (confidence <= hi)
        if inside.any():
            ece += float(inside.float().mean()) * abs(float(correct[inside].mean()) - float(confidence[inside].mean()))
    return ece


def classification_metrics(
    probs: Tensor, labels: Tensor, classes: list[str], ordinal: bool
) -> tuple[dict[str, float], dict[str, Any]]:
    """Metrics of probabilities (N, C) against labels (N,), and notes: the confusion matrix.

    macro-F1 is scikit-learn's: the mean F1 over the classes that occur in the labels or the
    predictions. A class absent from both has no F1 to count (0/0); counting it as 0 scored a
    test set of one class, every text right, 0.2 among five classes. Per-class precision and
    recall are reported for every class, 0 where undefined (zero_division=0), as scikit-learn's
    classification report does; the confusion matrix shows which classes were absent."""
    m = _sklearn()
    y, p = labels.numpy(), probs.argmax(-1).numpy()
    index = list(range(len(classes)))
    precision, recall, _, _ = m.precision_recall_fscore_support(y, p, labels=index, zero_division=0)
    metrics = {
        "loss": float(F.nll_loss(probs.clamp(min=1e-12).log(), labels)),
        "accuracy": float(m.accuracy_score(y, p)),
        "macro_f1": float(m.f1_score(y, p, average="macro", zero_division=0)),
        "ece": expected_calibration_error(probs, labels),
    }
    if ordinal:
        metrics["mae"] = float((torch.tensor(p) - labels).abs().float().mean())
    for i, name in enumerate(classes):
        metrics[f"precision_{name}"], metrics[f"recall_{name}"] = float(precision[i]), float(recall[i])
    notes = {"confusion": m.confusion_matrix(y, p, labels=index).tolist(), "classes": list(classes)}
    return metrics, notes


def group_quality(groups: list[str | None], probs: Tensor, labels: Tensor, min_size: int) -> dict[str, Any] | None:
    """Per group with ≥ ``min_size`` examples: the mean predicted class (expected value under the
    predicted distribution) against the true mean, and the Spearman ρ between them."""
    if not any(groups):
        return None
    from scipy.stats import spearmanr

    expected = probs @ torch.arange(probs.shape[1], dtype=probs.dtype)  # (N,)
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        if g is not None:
            by_group.setdefault(g, []).append(i)
    names = sorted(g for g, rows in by_group.items() if len(rows) >= min_size)
    predicted = [float(expected[by_group[g]].mean()) for g in names]
    true = [float(labels[by_group[g]].float().mean()) for g in names]
    varied = len(names) >= 3 and len(set(predicted)) > 1 and len(set(true)) > 1  # else ρ is undefined
    rho = float(spearmanr(predicted, true).statistic) if varied else float("nan")
    return {"names": names, "predicted": predicted, "true": true, "spearman": rho, "min_size": min_size}
