"""Scores of class probabilities (metrics/classification.py)."""

import pytest
import torch

from heedful.metrics.classification import expected_calibration_error


def test_expected_calibration_error_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 1, 1])
    # bins (0.8,0.867]… : conf 0.9 correct → |1−0.9|; conf 0.6 wrong → |0−0.6|; conf 0.7 correct → |1−0.7|
    assert expected_calibration_error(probs, labels) == pytest.approx((0.1 + 0.6 + 0.3) / 3)
