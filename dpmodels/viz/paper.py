"""The seed paper's figure: an image, then one hard cluster map per layer (shallow to deep), with a
row of uncertainty maps under it, for one or more networks (e.g. ImageNet-trained beside the same
architecture with random weights). Data in, figure out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from ..maps.layer_maps import LayerMaps
from .maps import _check_index, _image_hwc, label_overlay, map_style

__all__ = ["plot_paper_figure"]


def plot_paper_figure(
    image,
    networks: Mapping[str, Sequence[LayerMaps]],
    index: int = 0,
    *,
    k_intervals: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    uncertainty: str | None = "entropy",
) -> Figure:
    """``networks``: ``{label: [LayerMaps of each layer, shallow to deep]}`` over the same images;
    ``image`` ``(C, H, W)`` is image ``index`` of them. Per network one row: the image, then each
    layer's most probable cluster at input resolution (colours: clusters by weight), titled with K̂
    and, from ``k_intervals[label][layer]``, its 90 % posterior interval; with ``uncertainty`` (a map
    kind, e.g. ``"entropy"`` or ``"epistemic"``) a second row of that map per layer, one colour scale
    per network."""
    if not networks or any(not maps for maps in networks.values()):
        raise ValueError("networks must map each label to a non-empty list of LayerMaps.")
    width = max(len(maps) for maps in networks.values())
    per_net = 2 if uncertainty else 1
    rows = per_net * len(networks)
    fig, axes = plt.subplots(rows, width + 1, figsize=(2.3 * (width + 1), 2.4 * rows), squeeze=False)
    rgb = _image_hwc(image)
    for r, (label, layers) in enumerate(networks.items()):
        top = axes[per_net * r]
        top[0].imshow(rgb)
        top[0].set_title(label, fontsize=9)
        values = []
        for j, maps in enumerate(layers, start=1):
            _check_index(maps, index, image)
            top[j].imshow(
                label_overlay(maps.at_input("labels", images=[index])[0].numpy(), int(maps.weights.shape[0]))
            )
            interval = (k_intervals or {}).get(label, {}).get(maps.name)
            k_text = f"K̂={maps.n_active}" + (f" [{interval[0]:.0f}, {interval[1]:.0f}]" if interval else "")
            top[j].set_title(f"{maps.name}\n{k_text}", fontsize=8)
            if uncertainty:
                values.append(maps.at_input(uncertainty, images=[index])[0].numpy())
        if uncertainty:
            bottom = axes[per_net * r + 1]
            finite = np.concatenate([v[np.isfinite(v)].ravel() for v in values])
            vmax = float(np.quantile(finite, 0.99)) if finite.size else 1.0
            cmap, label = map_style(uncertainty)
            bottom[0].axis("off")
            bottom[0].text(0.5, 0.5, label, ha="center", va="center", fontsize=8, wrap=True)
            for j, v in enumerate(values, start=1):
                im = bottom[j].imshow(v, cmap=cmap, vmin=0.0, vmax=max(vmax, 1e-9))
            fig.colorbar(im, ax=list(bottom[1 : len(values) + 1]), fraction=0.02, pad=0.01)
        for row in axes[per_net * r : per_net * (r + 1)]:
            for ax in row[len(layers) + 1 :]:
                ax.axis("off")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig
