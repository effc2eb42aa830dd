"""The concept figure: a layer's component dendrogram cut at the chosen number of concepts, its
entropy curve, and each concept's prototype patches (top-responsibility receptive fields)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import dendrogram

from ..maps.layer_maps import LayerMaps
from .fit import cluster_colours
from .maps import draw_patch_grid, top_patches

__all__ = ["plot_concepts"]

MAX_CONCEPTS = 10


def plot_concepts(images, concept_maps: LayerMaps, selection, *, top_k: int = 6) -> Figure:
    """Left: the dendrogram of the layer's components (leaf labels: component index; leaves
    coloured by concept, dashed line at the cut) above the entropy curve ``ENT(k)`` with the chosen
    ``k`` and its interval. Right: for each concept (row, at most 10), the ``top_k`` positions with
    the highest concept responsibility, as their receptive-field patches. ``images``: ``(I, C, H,
    W)``, the extracted images; ``selection``: the layer's ``ConceptSelection``."""
    h, k = selection.hierarchy, selection.k
    imgs = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.as_tensor(images)
    if imgs.dim() != 4 or imgs.shape[0] != concept_maps.num_images:
        raise ValueError(
            f"expected the {concept_maps.num_images} extracted images (I, C, H, W), got {tuple(imgs.shape)}."
        )
    rows = min(k, MAX_CONCEPTS)
    fig = plt.figure(figsize=(4.2 + 1.2 * top_k, max(4.5, 1.2 * rows)), constrained_layout=True)
    left, right = fig.subfigures(1, 2, width_ratios=[4.2, 1.2 * top_k])
    ax_tree, ax_ent = left.subplots(2, 1, height_ratios=[2, 1])
    colours = cluster_colours(max(k, 1))
    concept_of = h.assignment(k)
    if h.num_components > 1:
        tree = dendrogram(
            h.linkage,
            ax=ax_tree,
            labels=[str(int(c)) for c in h.components],
            color_threshold=0,
            above_threshold_color="grey",
            leaf_font_size=6,
        )
        for tick, leaf in zip(ax_tree.get_xticklabels(), tree["leaves"], strict=True):
            tick.set_color(colours[concept_of[leaf]])
        if k > 1:
            cut = 0.5 * (h.linkage[-k, 2] + h.linkage[-k + 1, 2]) if k < h.num_components else h.linkage[0, 2]
            ax_tree.axhline(cut, ls="--", color="k", lw=0.8)
    ax_tree.set(
        title=f"{concept_maps.name}: {h.criterion} merges", ylabel="-log merge criterion", xlabel="component"
    )
    ks = np.arange(1, h.num_components + 1)
    ax_ent.plot(ks, h.entropy_curve, "o-", ms=3)
    ax_ent.axvline(k, color="k", ls="--", lw=0.8, label=f"k = {k}")
    lo, hi = selection.k_interval
    ax_ent.axvspan(lo - 0.5, hi + 0.5, color="grey", alpha=0.2, label="90% over draws")
    ax_ent.set(xlabel="number of concepts k", ylabel="ENT (nats / point)")
    ax_ent.legend(fontsize=7)
    ax = right.subplots()
    grid = [[(p, "") for p, _ in top_patches(imgs, concept_maps, c, top_k)] for c in range(rows)]
    labels = []
    for c in range(rows):
        members = ", ".join(str(int(m)) for m in h.components[concept_of == c])
        labels.append((f"concept {c}\nw={float(concept_maps.weights[c]):.2f}\n[{members}]", colours[c]))
    draw_patch_grid(ax, grid, labels)
    right.suptitle(f"top-{top_k} patches per concept", fontsize=9)
    return fig


def write_concept_figures(out_dir, images, concept_maps: dict, selections: dict, fig_cfg: dict | None = None):
    """``figures/concepts_<layer>.png`` (``plot_concepts``) and ``figures/concept_layers_00.png``
    (image 0's concept maps, every layer) of a run; returns their paths."""
    from pathlib import Path

    from ..analysis.outputs import layer_file
    from .maps import plot_image_layers, save_figure

    cfg = dict(fig_cfg or {})
    dpi, top_k = cfg.get("dpi", 110), cfg.get("prototypes", 6)
    fig_dir = Path(out_dir) / "figures"
    written = []
    for name, cmaps in concept_maps.items():
        fig = plot_concepts(images.images, cmaps, selections[name], top_k=top_k)
        written.append(save_figure(fig, fig_dir / f"concepts_{layer_file(name)}.png", dpi=dpi))
    if len(images) and cfg.get("num_images", 1) > 0:
        fig = plot_image_layers(images.images[0], list(concept_maps.values()), 0)
        written.append(save_figure(fig, fig_dir / "concept_layers_00.png", dpi=dpi))
    return written
