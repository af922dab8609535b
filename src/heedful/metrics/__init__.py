"""Metrics that are not a library call away (the rest come from sacreBLEU, jiwer, scikit-learn)."""

from heedful.metrics.fid import FeatureClassifier, feature_statistics, frechet_distance

__all__ = ["FeatureClassifier", "feature_statistics", "frechet_distance"]
