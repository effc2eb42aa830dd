"""Evaluation of cluster maps against ground-truth region masks, and baseline clusterings."""

from .baselines import (
    BaselineResult,
    bayesian_gmm,
    compare_methods,
    kmeans_fixed,
    kmeans_silhouette,
    nmf_factorization,
)
from .metrics import ECE_BINS, calibration_error, evaluate_labels, hungarian_match, majority_match
from .report import RESOLUTIONS, evaluate_layer, evaluate_point_labels, evaluation_table

__all__ = [
    "ECE_BINS",
    "RESOLUTIONS",
    "BaselineResult",
    "bayesian_gmm",
    "calibration_error",
    "compare_methods",
    "evaluate_labels",
    "evaluate_layer",
    "evaluate_point_labels",
    "evaluation_table",
    "hungarian_match",
    "majority_match",
    "kmeans_fixed",
    "kmeans_silhouette",
    "nmf_factorization",
]
