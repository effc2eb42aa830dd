"""Figures: pure functions, data in, matplotlib figure out (callers save them)."""

from .fit import plot_elbo_history, plot_fit_projection

__all__ = ["plot_elbo_history", "plot_fit_projection"]
