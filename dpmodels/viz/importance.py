"""Concept importance figures: for one layer and class, each concept's score with its interval
beside the concept's prototype patches."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from torch import Tensor

from ..activations.types import LayerGeometry
from ..maps.colours import cluster_colours

__all__ = ["plot_concept_importance"]


def plot_concept_importance(
    images: Tensor,
    labels: Tensor,
    confidence: Tensor,
    geometry: LayerGeometry,
    summary: pd.DataFrame,
    *,
    estimator: str = "occlusion",
    top_k: int = 4,
    max_concepts: int = 10,
    title: str = "",
) -> Figure:
    """Rows: the concepts of ``summary`` (one layer and class, :func:`summarize_importance` rows),
    most important first; left, the ``estimator``'s score with its interval (a bar in the concept's
    colour); right, the ``top_k`` positions of the concept with the highest responsibility, shown as
    their receptive-field patches. ``images (I, C, H, W)`` in ``[0, 1]``; ``labels`` and
    ``confidence`` ``(I, H_l, W_l)``."""
    rows = summary[summary["estimator"] == estimator].sort_values("score", ascending=False).head(max_concepts)
    n = max(len(rows), 1)
    fig = Figure(figsize=(2.6 + 1.1 * top_k, 0.95 * n + 0.6), layout="constrained")
    grid = fig.add_gridspec(n, top_k + 2)
    colours = cluster_colours(
        int(max(labels.max().item() + 1, rows["concept"].max() + 1 if len(rows) else 1))
    )
    imgs = images.detach().cpu().float().clamp(0, 1).numpy()
    lab, conf = labels.numpy(), confidence.numpy()
    lim = np.nanmax(np.abs(rows[["score", "low", "high"]].to_numpy(dtype=float))) if len(rows) else 1.0
    lim = float(lim) if np.isfinite(lim) and lim > 0 else 1.0
    lowest = float(np.nanmin(rows[["score", "low"]].to_numpy(dtype=float))) if len(rows) else 0.0
    for r, (_, row) in enumerate(rows.iterrows()):
        k = int(row["concept"])
        ax = fig.add_subplot(grid[r, :2])
        err = None
        if np.isfinite(row["low"]):
            err = [[row["score"] - row["low"]], [row["high"] - row["score"]]]
        ax.barh([0], [row["score"]], xerr=err, color=colours[k % len(colours)], capsize=3)
        ax.set_xlim(-lim * 1.1 if lowest < 0 else 0, lim * 1.1)
        ax.set_yticks([0], [f"concept {k}\n{row['mean_area']:.0%} of positions"], fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        if r == n - 1:
            ax.set_xlabel("logit drop" if estimator == "occlusion" else "Sobol total index", fontsize=8)
        where = np.argwhere(lab == k)  # (m, 3) image, y, x
        order = np.argsort(-conf[lab == k])[:top_k]
        for j in range(top_k):
            pa = fig.add_subplot(grid[r, 2 + j])
            pa.set_axis_off()
            if j < len(order):
                i, y, x = where[order[j]]
                y0, y1, x0, x1 = geometry.patch_box(int(y), int(x))
                patch = imgs[i, :, y0:y1, x0:x1].transpose(1, 2, 0)
                pa.imshow(patch[..., 0] if patch.shape[-1] == 1 else patch, cmap="gray", vmin=0, vmax=1)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
