"""The Pyro model of the mixture, its base measure, and its variational family (as a guide)."""

from .base_measure import COVARIANCE_TYPES, BaseMeasure, empirical_base_measure
from .dpgmm import MAX_PLATE_NESTING, ModelSpec, dpgmm_model
from .family import VariationalParams
from .guide import assignment_log_probs, dpgmm_guide

__all__ = [
    "COVARIANCE_TYPES",
    "MAX_PLATE_NESTING",
    "BaseMeasure",
    "ModelSpec",
    "VariationalParams",
    "assignment_log_probs",
    "dpgmm_guide",
    "dpgmm_model",
    "empirical_base_measure",
]
