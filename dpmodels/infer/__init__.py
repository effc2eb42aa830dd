"""Inference engines: closed-form natural-gradient VI (default) and generic Pyro SVI (reference)."""

from .natural import NaturalOptions, fit_natural
from .pyro_svi import PyroOptions, fit_pyro
from .result import ConvergenceWarning, FitResult

__all__ = ["ConvergenceWarning", "FitResult", "NaturalOptions", "PyroOptions", "fit_natural", "fit_pyro"]
