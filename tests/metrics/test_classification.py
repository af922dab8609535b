"""Scores of class probabilities (metrics/classification.py)."""

import pytest
import torch

from heedful.metrics.classification import expected_calibration_error


def test_expected_calibration_error_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1])
    # bins (0.8,0.867]… : conf 0.9 correct → |1−0.9|; conf 0.6 wrong → |0−0.6|; conf 0.7 correct → |1−0.7|
    assert expected_calibration_error(probs, labels) == pytest.approx((0.1 + 0.6 + 0.3) / 3)


def test_macro_f1_averages_over_the_classes_in_the_labels_or_the_predictions():
    """It averaged over every class of the run: a test set of one class, all right, scored 0.2 of 5 classes."""
    from sklearn.metrics import f1_score

    from heedful.metrics.classification import classification_metrics

    classes = ["1", "2", "3", "4", "5"]
    labels = torch.tensor([4, 4, 4, 4, 3])  # classes "1"–"3" are in neither the truth nor the predictions
    probs = torch.nn.functional.one_hot(torch.tensor([4, 4, 4, 3, 4]), 5).float() * 0.9 + 0.02  # (5, 5)
    metrics, notes = classification_metrics(probs, labels, classes, ordinal=True)
    expected = f1_score(labels.numpy(), [4, 4, 4, 3, 4], average="macro")
    assert metrics["macro_f1"] == pytest.approx(expected) == pytest.approx((0.75 + 0.0) / 2)  # F1 of "5", of "4"
    assert (metrics["precision_5"], metrics["recall_5"]) == (pytest.approx(0.75), pytest.approx(0.75))
    assert metrics["precision_1"] == metrics["recall_1"] == 0.0 and len(notes["confusion"]) == 5  # every class kept
    everything_right, _ = classification_metrics(torch.eye(5)[[4, 4, 4]], torch.tensor([4, 4, 4]), classes, True)
    assert everything_right["accuracy"] == everything_right["macro_f1"] == 1.0
