"""Figures of posterior diagnostics: plain matplotlib, data in, figure out (no ArviZ here).

:mod:`dpmodels.diagnostics.plots` pulls the arrays out of an ``InferenceData`` and calls these.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_elbo_traces", "plot_n_active", "plot_predictive_marginals"]


def plot_elbo_traces(elbo: np.ndarray, title: str = "ELBO per chain") -> Figure:
    """One line per chain of an ELBO history ``(C, T)`` (NaN-padded); total nats per fit."""
    elbo = np.asarray(elbo, dtype=float)
    if elbo.ndim != 2:
        raise ValueError(f"elbo must have shape (chains, iterations), got {elbo.shape}.")
    fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    for c, trace in enumerate(elbo):
        ok = np.isfinite(trace)
        ax.plot(np.flatnonzero(ok), trace[ok], lw=1.2, label=f"chain {c}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("ELBO (nats)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def plot_n_active(
    n_active: np.ndarray, title: str = "posterior of the number of active components"
) -> Figure:
    """Grouped bars: share of draws with each ``n_active`` value, one bar colour per chain.
    ``n_active (C, S)`` integers."""
    n_active = np.asarray(n_active)
    if n_active.ndim != 2:
        raise ValueError(f"n_active must have shape (chains, draws), got {n_active.shape}.")
    C = n_active.shape[0]
    values = np.arange(n_active.min(), n_active.max() + 1)
    width = 0.8 / C
    fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    for c in range(C):
        share = np.array([(n_active[c] == v).mean() for v in values])
        ax.bar(values + (c - (C - 1) / 2) * width, share, width=width, label=f"chain {c}")
    ax.set_xticks(values)
    ax.set_xlabel("active components")
    ax.set_ylabel("share of draws")
    ax.set_title(title)
    ax.legend(fontsize="small")
    return fig


def plot_predictive_marginals(
    observed: np.ndarray, predictive: np.ndarray, features: list[int] | None = None, bins: int = 30
) -> Figure:
    """Posterior predictive check of per-feature marginals: histogram of the data ``(n, D)`` and, in
    grey, of a few predictive replicates ``(R, n, D)`` on the same bins; one panel per feature."""
    observed, predictive = np.asarray(observed, dtype=float), np.asarray(predictive, dtype=float)
    if observed.ndim != 2 or predictive.ndim != 3 or predictive.shape[-1] != observed.shape[-1]:
        raise ValueError(
            f"expected observed (n, D) and predictive (R, n, D), got {observed.shape} and {predictive.shape}."
        )
    features = list(range(min(4, observed.shape[1]))) if features is None else list(features)
    fig, axes = plt.subplots(1, len(features), figsize=(3.2 * len(features), 3.2), constrained_layout=True)
    for ax, d in zip(np.atleast_1d(axes), features, strict=True):
        edges = np.histogram_bin_edges(np.concatenate([observed[:, d], predictive[..., d].ravel()]), bins)
        for r, rep in enumerate(predictive[..., d]):
            ax.hist(
                rep,
                edges,
                density=True,
                histtype="step",
                color="0.6",
                lw=0.8,
                label="predictive" if r == 0 else None,
            )
        ax.hist(observed[:, d], edges, density=True, histtype="step", color="C3", lw=1.8, label="data")
        ax.set_title(f"feature {d}")
    np.atleast_1d(axes)[0].legend(fontsize="small")
    return fig
