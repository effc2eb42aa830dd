"""Figures: pure functions, data in, matplotlib figure out (``save_figure`` writes one atomically)."""

from .diagnostics import plot_elbo_traces, plot_n_active, plot_predictive_marginals
from .fit import plot_elbo_history, plot_fit_projection
from .maps import (
    label_overlay,
    plot_cluster_counts,
    plot_image_layers,
    plot_layer_maps,
    plot_prototypes,
    plot_transitions,
    save_figure,
)
from .paper import plot_paper_figure

__all__ = [
    "label_overlay",
    "plot_cluster_counts",
    "plot_elbo_history",
    "plot_elbo_traces",
    "plot_fit_projection",
    "plot_image_layers",
    "plot_layer_maps",
    "plot_n_active",
    "plot_paper_figure",
    "plot_predictive_marginals",
    "plot_prototypes",
    "plot_transitions",
    "save_figure",
]
