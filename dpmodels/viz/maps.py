"""Figures of layer maps: per-image cluster/uncertainty panels, layers side by side, cluster counts
per layer, cluster prototypes (top image patches) and layer-to-layer transitions.

Cluster ``k`` (canonical order, 0 = largest weight) is drawn in colour ``cluster_colours(K)[k]`` in
every image and figure. Functions are pure: data in, ``matplotlib`` figure out; ``save_figure``
writes one atomically and closes it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..io import atomic_path
from ..maps.layer_maps import LayerMaps
from ..maps.registry import MAPS
from ..maps.transitions import transition_matrix
from .fit import cluster_colours

__all__ = [
    "draw_patch_grid",
    "label_overlay",
    "plot_cluster_counts",
    "plot_image_layers",
    "plot_layer_maps",
    "plot_prototypes",
    "plot_transitions",
    "save_figure",
    "top_patches",
]

MAX_LEGEND = 10  # legend entries per label panel


def map_style(kind: str) -> tuple[str, str]:
    """``(colormap, colourbar label)`` of a map kind, from its ``dpmodels.maps.MAPS`` entry."""
    entry = MAPS.get(kind)
    return (entry.cmap, entry.label) if entry is not None else ("viridis", kind)


def _image_hwc(image) -> np.ndarray:
    """``(C, H, W)`` tensor/array in [0, 1] -> ``(H, W, 3)`` for imshow."""
    x = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected one image shaped (C, H, W) with C = 1 or 3, got {x.shape}.")
    x = np.clip(np.moveaxis(x, 0, -1), 0.0, 1.0)
    return np.repeat(x, 3, -1) if x.shape[-1] == 1 else x


def label_overlay(labels, num_clusters: int) -> np.ndarray:
    """``(H, W)`` int labels -> ``(H, W, 4)`` RGBA in the fixed palette (``-1`` transparent)."""
    lab = np.asarray(labels)
    colours = cluster_colours(max(num_clusters, 1))
    rgba = np.zeros(lab.shape + (4,))
    ok = lab >= 0
    rgba[ok, :3] = colours[lab[ok]]
    rgba[ok, 3] = 1.0
    return rgba


def _check_index(maps: LayerMaps, index: int, image) -> None:
    if not 0 <= index < maps.num_images:
        raise ValueError(f"image index {index} out of range for {maps.num_images} images.")
    size = tuple(_image_hwc(image).shape[:2])
    if size != tuple(maps.geometry.input_size):
        raise ValueError(
            f"the image is {size} but layer {maps.name!r} maps {tuple(maps.geometry.input_size)} inputs; "
            "pass the image the activations were extracted from."
        )


def _draw_row(axes, image, maps: LayerMaps, index: int, kinds, alpha: float, fig: Figure) -> None:
    rgb, K = _image_hwc(image), int(maps.weights.shape[0])
    axes[0].imshow(rgb)
    axes[0].set_title("image")
    for ax, kind in zip(axes[1:], kinds, strict=True):
        if kind in MAPS and MAPS[kind].clusters:
            lab = maps.at_input(kind, images=[index])[0].numpy()
            ax.imshow(rgb)
            ax.imshow(label_overlay(lab, K), alpha=alpha)
            present = [int(k) for k in np.unique(lab) if k >= 0]  # canonical order = by weight
            unit = "concept" if maps.meta.get("level") == "concepts" else "cluster"  # dpmodels.concepts
            handles = [
                Patch(color=cluster_colours(K)[k], label=f"{unit} {k} (w={float(maps.weights[k]):.2f})")
                for k in present[:MAX_LEGEND]
            ]
            if len(present) > MAX_LEGEND:  # keep the layout readable: the lightest clusters are summarised
                handles.append(Patch(color="white", label=f"+{len(present) - MAX_LEGEND} smaller clusters"))
            ax.legend(handles=handles, fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
            ax.set_title(f"{maps.name}: {unit}s")
        else:
            v = maps.at_input(kind, images=[index])[0].numpy()
            cmap, label = map_style(kind)
            im = ax.imshow(v, cmap=cmap)
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=label)
            ax.set_title(f"{maps.name}: {kind}")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def plot_layer_maps(
    image, maps: LayerMaps, index: int, *, kinds: Sequence[str] = ("labels", "entropy", "novelty"), alpha=0.55
) -> Figure:
    """One layer, one image: image | cluster overlay (legend: cluster and weight) | one panel per
    continuous ``kind`` with a colourbar. ``image``: ``(C, H, W)``, the ``index``-th extracted image."""
    _check_index(maps, index, image)
    fig, axes = plt.subplots(
        1, 1 + len(kinds), figsize=(3.4 * (1 + len(kinds)), 3.2), constrained_layout=True
    )
    _draw_row(np.atleast_1d(axes), image, maps, index, list(kinds), alpha, fig)
    name = maps.image_names[index] if index < len(maps.image_names) else f"image {index}"
    fig.suptitle(f"{name}, layer {maps.name}")
    return fig


def plot_image_layers(
    image,
    layers: Sequence[LayerMaps],
    index: int,
    *,
    kinds: Sequence[str] = ("labels", "entropy", "novelty"),
    alpha: float = 0.55,
) -> Figure:
    """All layers of one image, one row per layer (shallow to deep), columns as in
    ``plot_layer_maps``; colours mean the same cluster index in every row's legend."""
    if not layers:
        raise ValueError("pass at least one LayerMaps.")
    for m in layers:
        _check_index(m, index, image)
    n_rows, n_cols = len(layers), 1 + len(kinds)
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(3.4 * n_cols, 3.0 * n_rows), squeeze=False, constrained_layout=True
    )
    for row, m in zip(axes, layers, strict=True):
        _draw_row(row, image, m, index, list(kinds), alpha, fig)
    return fig


def plot_cluster_counts(
    draws: Mapping[str, Sequence[float]] | None = None,
    *,
    intervals: Mapping[str, tuple[float, float, float]] | None = None,
    true_k: int | None = None,
    level: float = 0.9,
) -> Figure:
    """Number of clusters per layer with posterior intervals, layers in the given order.

    ``draws``: ``{layer: (S,) draws of the number of clusters}`` (e.g. ``dpmodels.maps.n_active_draws``;
    the median and central ``level`` interval are shown), or ``intervals``: ``{layer: (low, mid,
    high)}``. ``true_k``: a dashed reference line (e.g. the number of mask regions)."""
    if (draws is None) == (intervals is None) or not (draws or intervals):
        raise ValueError("pass exactly one of draws={layer: draws} or intervals={layer: (low, mid, high)}.")
    rows = {}
    for name, v in (draws or intervals).items():
        v = np.asarray(v, dtype=float).ravel()
        if draws is not None:
            if v.size == 0:
                raise ValueError(f"layer {name!r} has no draws.")
            v = np.quantile(v, [(1 - level) / 2, 0.5, (1 + level) / 2])
        elif v.shape != (3,) or not v[0] <= v[1] <= v[2]:
            raise ValueError(f"layer {name!r}: expected (low, mid, high) with low <= mid <= high, got {v}.")
        rows[name] = v
    names, q = list(rows), np.stack(list(rows.values()))  # (layers, 3)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(names) + 2), 3.4), constrained_layout=True)
    x = np.arange(len(names))
    err = np.vstack([q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]])
    label = f"posterior median, {round(level * 100)}% interval" if draws is not None else "posterior interval"
    ax.errorbar(x, q[:, 1], yerr=err, fmt="o", capsize=4, label=label)
    if true_k is not None:
        ax.axhline(true_k, ls="--", color="grey", label=f"true regions K* = {true_k}")
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set(ylabel="number of clusters", title="clusters per layer")
    ax.legend(fontsize=7)
    return fig


def _fit_cell(patch: np.ndarray, cell: int) -> np.ndarray:
    """``patch (h, w, 3)`` resized (nearest pixel) so that its longer side is ``cell`` pixels."""
    h, w = patch.shape[:2]
    scale = cell / max(h, w)
    ys = np.minimum((np.arange(max(1, round(h * scale))) / scale).astype(np.int64), h - 1)
    xs = np.minimum((np.arange(max(1, round(w * scale))) / scale).astype(np.int64), w - 1)
    return patch[ys][:, xs]


def draw_patch_grid(ax, rows: Sequence[Sequence[tuple[np.ndarray, str] | None]], labels, *, cell: int = 96):
    """Image patches in a grid on one axes (one image, so hundreds of patches cost one draw):
    ``rows[r][c]`` is ``(patch (h, w, 3) in [0, 1], title)`` or ``None`` (an empty cell); each
    patch is scaled to fit a ``cell`` x ``cell`` square, centred. ``labels``: one ``(text, colour)``
    per row, written left of it."""
    n_rows, n_cols = max(len(rows), 1), max((len(r) for r in rows), default=1)
    gap = max(2, cell // 6)  # room for the titles
    step = cell + gap
    canvas = np.ones((n_rows * step, max(n_cols, 1) * step - gap + 1, 3))
    for r, row in enumerate(rows):
        for c, item in enumerate(row):
            if item is None:
                continue
            patch = _fit_cell(item[0], cell)
            y0 = r * step + gap + (cell - patch.shape[0]) // 2
            x0 = c * step + (cell - patch.shape[1]) // 2
            canvas[y0 : y0 + patch.shape[0], x0 : x0 + patch.shape[1]] = patch
            ax.text(c * step + cell / 2, r * step + gap - 1, item[1], fontsize=6, ha="center", va="bottom")
    ax.imshow(canvas, interpolation="nearest")
    for r, (text, colour) in enumerate(labels):
        ax.text(-gap, r * step + gap + cell / 2, text, color=colour, fontsize=8, ha="right", va="center")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def top_patches(images, maps: LayerMaps, label: int, top_k: int) -> list[tuple[np.ndarray, float]]:
    """The receptive-field patches ``(h, w, 3)`` of the ``top_k`` positions labelled ``label`` with
    the highest confidence, with that confidence (fewer if fewer positions carry the label).
    ``images``: ``(I, C, H, W)``, the extracted images."""
    conf = torch.nan_to_num(maps.confidence, nan=-1.0)
    score = torch.where(maps.labels == label, conf, torch.full_like(conf, -1.0)).flatten()  # (I*H_l*W_l,)
    k = min(top_k, score.numel())
    values, best = torch.topk(score, k)  # highest first, like a descending sort
    Hl, Wl = maps.geometry.map_size
    out = []
    for value, flat in zip(values.tolist(), best.tolist(), strict=True):
        if value < 0:
            break
        i, rem = divmod(flat, Hl * Wl)
        y0, y1, x0, x1 = maps.geometry.patch_box(*divmod(rem, Wl))
        out.append((_image_hwc(images[i])[y0:y1, x0:x1], value))
    return out


def plot_prototypes(
    images, maps: LayerMaps, *, top_k: int = 6, clusters: Sequence[int] | None = None
) -> Figure:
    """Cluster prototypes: for each cluster (row; default the active ones, at most 10), the ``top_k``
    positions assigned to it with the highest responsibility, shown as their receptive-field patch
    (``geometry.patch_box``), scaled to one cell size. ``images``: ``(I, C, H, W)``, the extracted
    images."""
    imgs = images.detach().cpu() if isinstance(images, torch.Tensor) else torch.as_tensor(images)
    if (
        imgs.dim() != 4
        or imgs.shape[0] != maps.num_images
        or tuple(imgs.shape[-2:]) != maps.geometry.input_size
    ):
        raise ValueError(
            f"expected the {maps.num_images} extracted images shaped (I, C, "
            f"{maps.geometry.input_size[0]}, {maps.geometry.input_size[1]}), got {tuple(imgs.shape)}."
        )
    if clusters is None:
        clusters = [int(k) for k in torch.nonzero(maps.active).flatten()[:10]]
    K = int(maps.weights.shape[0])
    n_rows = max(len(clusters), 1)
    fig, ax = plt.subplots(figsize=(1.3 * top_k + 1.2, 1.3 * n_rows))
    fig.subplots_adjust(
        left=1.2 / (1.3 * top_k + 1.2), right=0.99, top=1 - 0.45 / (1.3 * n_rows), bottom=0.01
    )
    rows = [[(p, f"r={v:.2f}") for p, v in top_patches(imgs, maps, k, top_k)] for k in clusters]
    labels = [(f"cluster {k}\nw={float(maps.weights[k]):.2f}", cluster_colours(K)[k]) for k in clusters]
    draw_patch_grid(ax, rows, labels)
    ax.set_title(f"{maps.name}: top-{top_k} patches per cluster (receptive field)", fontsize=9)
    return fig


def plot_transitions(layers: Sequence[LayerMaps]) -> Figure:
    """Layer-to-layer transitions: for consecutive layers, the row-normalised co-occurrence of their
    clusters over all input pixels (``dpmodels.maps.transition_matrix``)."""
    if len(layers) < 2:
        raise ValueError(f"transitions need at least two layers, got {len(layers)}.")
    n = len(layers) - 1
    fig, axes = plt.subplots(1, n, figsize=(4.0 * n, 3.8), squeeze=False, constrained_layout=True)
    for ax, a, b in zip(axes[0], layers[:-1], layers[1:], strict=True):
        la, lb = a.at_input("labels"), b.at_input("labels")
        ka, kb = int(max(la.max(), 0)) + 1, int(max(lb.max(), 0)) + 1
        mat = transition_matrix(la, lb, ka, kb)
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(kb))
        ax.set_yticks(range(ka))
        for t, c in zip(ax.get_xticklabels(), cluster_colours(kb), strict=True):
            t.set_color(c)
        for t, c in zip(ax.get_yticklabels(), cluster_colours(ka), strict=True):
            t.set_color(c)
        ax.set(xlabel=f"{b.name} cluster", ylabel=f"{a.name} cluster", title=f"{a.name} → {b.name}")
        fig.colorbar(im, ax=ax, label="share of row's pixels")
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Save ``fig`` to ``path`` atomically (temporary file in the same folder, then ``os.replace``),
    creating the folder if needed; the figure is closed afterwards. Returns the path."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"path {str(path)!r} has no file extension; use e.g. '.png' or '.pdf'.")
    try:
        with atomic_path(path, suffix=path.suffix) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
    finally:
        plt.close(fig)
    return path
