"""Figures of one fitted mixture: a 2-D projection of the points and the ELBO trace."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..maps.colours import cluster_colours  # one palette, owned by the maps (re-exported here)

__all__ = ["plot_fit_projection", "plot_elbo_history", "cluster_colours"]


def plot_fit_projection(
    X: np.ndarray,
    labels: np.ndarray,
    entropy: np.ndarray,
    weights: np.ndarray,
    means: np.ndarray | None = None,
    title: str = "",
) -> Figure:
    """Left: points on their first two principal axes, coloured by cluster (legend: weights).
    Right: the same points coloured by assignment entropy (nats)."""
    X = np.asarray(X, dtype=float)
    centre = X.mean(0)
    _, _, vt = np.linalg.svd(X - centre, full_matrices=False)
    axes2 = vt[: min(2, X.shape[1])].T
    P = (X - centre) @ axes2
    if P.shape[1] == 1:
        P = np.column_stack([P[:, 0], np.zeros(len(P))])
    fig, (ax_l, ax_e) = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    used = np.unique(labels)
    colours = cluster_colours(int(max(used.max() + 1, 1)))
    for k in used:
        sel = labels == k
        ax_l.scatter(
            P[sel, 0], P[sel, 1], s=4, color=colours[k], label=f"cluster {k}: weight {weights[k]:.2f}"
        )
    if means is not None:
        M = (np.asarray(means)[used] - centre) @ axes2
        M = M if M.shape[1] == 2 else np.column_stack([M[:, 0], np.zeros(len(M))])
        ax_l.scatter(M[:, 0], M[:, 1], marker="x", s=60, color="black", label="posterior mean")
    ax_l.set(xlabel="principal axis 1", ylabel="principal axis 2", title="most probable cluster")
    ax_l.legend(fontsize=7, markerscale=2, loc="best")
    sc = ax_e.scatter(P[:, 0], P[:, 1], s=4, c=entropy, cmap="magma", vmin=0)
    fig.colorbar(sc, ax=ax_e, label="assignment entropy (nats)")
    ax_e.set(xlabel="principal axis 1", ylabel="principal axis 2", title="uncertainty of the assignment")
    if title:
        fig.suptitle(title)
    return fig


def plot_elbo_history(history: np.ndarray, title: str = "ELBO per point") -> Figure:
    """ELBO (nats per point) against iteration; one line per fit for ``(T, B)`` input."""
    h = np.asarray(history, dtype=float)
    h = h[:, None] if h.ndim == 1 else h
    fig, ax = plt.subplots(figsize=(6, 3.6), constrained_layout=True)
    for b in range(h.shape[1]):
        ax.plot(np.arange(1, len(h) + 1), h[:, b], lw=1.2, label=f"fit {b}" if h.shape[1] > 1 else None)
    ax.set(xlabel="iteration", ylabel="ELBO (nats / point)", title=title)
    if h.shape[1] > 1:
        ax.legend(fontsize=7)
    return fig
