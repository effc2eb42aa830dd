"""Local-statistics ("texture energy") pooling of a layer's activation maps.

A texture is a stationary pattern: a single filter's rectified response to a grating rises and
falls with the grating's phase, so the activation vector at one position varies within a region
of one texture, while its *local average* (the filter's energy in a neighbourhood) is nearly
constant there. This is the classic texture-energy / filter-bank-statistics representation (Laws
1980; Malik & Perona 1990; the spatially averaged rectified responses of Portilla & Simoncelli): each
position's vector becomes the mean of the layer's ``(C,)`` vectors over a ``w x w`` window of map
positions centred on it (stride 1, same ``H_l x W_l`` output). At the image border only the
positions inside the map are averaged (``count_include_pad=False``), so border vectors stay on
the same scale as interior ones.

Geometry: the window is centred, so map positions keep their centres (``offset``, ``stride``
unchanged) and each position now sees ``w`` neighbouring receptive fields, i.e. a field of
``rf + (w - 1) * stride`` input pixels per axis.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor

from .types import LayerGeometry

__all__ = ["check_smooth", "smooth_geometry", "smooth_maps"]


def check_smooth(smooth) -> int | None:
    """Validate a pooling window: ``None`` (no pooling) or an odd positive ``int``; ``1`` is returned
    as ``None`` (a 1 x 1 window changes nothing)."""
    if smooth is None:
        return None
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1 or smooth % 2 == 0:
        raise ValueError(
            f"smooth must be None or an odd positive int (the side of a centred window of map positions), "
            f"got {smooth!r}; try smooth=3 or smooth=5, or None for no pooling."
        )
    return None if smooth == 1 else smooth


def smooth_maps(maps: Tensor, window: int) -> Tensor:
    """Mean of each ``window x window`` neighbourhood of map positions, per channel.

    ``maps``: ``(I, C, H_l, W_l)`` activations; ``window``: odd side length in map positions.
    Returns ``(I, C, H_l, W_l)`` in the input's dtype; at the border only in-map positions are
    averaged. The result is the same whatever the batch (images never mix).
    """
    window = check_smooth(window)
    if maps.dim() != 4:
        raise ValueError(f"maps must be (I, C, H_l, W_l), got shape {tuple(maps.shape)}.")
    if window is None:
        return maps
    dtype = maps.dtype
    x = maps.double() if dtype == torch.float64 else maps.float()
    pad = window // 2
    out = F.avg_pool2d(x, window, stride=1, padding=pad, count_include_pad=False)  # (I, C, H_l, W_l)
    return out.to(dtype)


def smooth_geometry(geometry: LayerGeometry, window: int | None) -> LayerGeometry:
    """The geometry of the pooled map: same centres, receptive field ``rf + (window - 1) * stride``
    per axis (in input pixels, rounded to an integer)."""
    window = check_smooth(window)
    if window is None:
        return geometry
    rf = tuple(
        int(round(r + (window - 1) * s))
        for r, s in zip(geometry.receptive_field, geometry.stride, strict=True)
    )
    return dataclasses.replace(geometry, receptive_field=rf)
