"""Metrics that are not a library call away (the rest come from sacreBLEU, jiwer, scikit-learn)."""

from heedful.metrics.fid import feature_statistics, frechet_distance

__all__ = ["feature_statistics", "frechet_distance"]
