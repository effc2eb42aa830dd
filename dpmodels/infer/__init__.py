"""Inference engines: closed-form natural-gradient VI (default) and generic Pyro SVI (reference)."""

from .checkpoint import FitCheckpointError
from .degenerate import DegenerateDataWarning, degenerate_report, warn_if_degenerate
from .natural import NaturalOptions, fit_natural
from .pyro_svi import PyroOptions, fit_pyro
from .result import ConvergenceWarning, FitResult

__all__ = [
    "ConvergenceWarning",
    "DegenerateDataWarning",
    "FitCheckpointError",
    "FitResult",
    "NaturalOptions",
    "PyroOptions",
    "degenerate_report",
    "fit_natural",
    "fit_pyro",
    "warn_if_degenerate",
]
