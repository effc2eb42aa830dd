"""Layer maps to input resolution, and input masks to map positions, from a layer's geometry.

Coordinates. Input pixel ``(py, px)`` has its centre at integer coordinates; map position
``(y, x)`` sits at input coordinates ``(offset_y + stride_y * y, offset_x + stride_x * x)``
(:class:`~dpmodels.activations.LayerGeometry`). Input pixel ``p`` therefore sits at the fractional
map coordinate ``u = (p - offset) / stride``. Resampling evaluates the map at ``u``:

* ``"nearest"`` (labels): the position ``round(u)`` (halves round up, ``floor(u + 0.5)``);
* ``"bilinear"`` (continuous maps): linear interpolation between ``floor(u)`` and ``floor(u) + 1``
  on each axis, i.e. ``align_corners=True`` semantics in map coordinates, shifted by ``offset``.

Pixels beyond the outermost position centres take the border value (``u`` clipped to
``[0, H_l - 1]``). Positions that hold no value (``NaN``, e.g. not extracted) are left out of the
interpolation and the remaining weights renormalised; a pixel with no valid neighbour is ``NaN``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..activations.types import LayerGeometry

__all__ = ["RESAMPLE_MODES", "centre_pixels", "mask_at_positions", "upsample_map"]

RESAMPLE_MODES = ("nearest", "bilinear")


def _map_coordinates(n_input: int, n_map: int, offset: float, stride: float) -> np.ndarray:
    """Map coordinate of each input pixel centre ``(n_input,)``, clipped to the map's extent."""
    u = (np.arange(n_input, dtype=np.float64) - offset) / stride
    return np.clip(u, 0.0, n_map - 1.0)


def _interpolation_matrix(u: np.ndarray, n: int) -> Tensor:
    """``(len(u), n)`` float64 weights of linear interpolation at map coordinates ``u`` (in
    ``[0, n - 1]``): ``1 - frac`` on ``floor(u)``, ``frac`` on the next position."""
    i0 = np.minimum(np.floor(u), n - 1).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w1 = u - i0  # weight of the upper neighbour, in [0, 1]
    m = np.zeros((len(u), n))
    rows = np.arange(len(u))
    np.add.at(m, (rows, i0), 1.0 - w1)
    np.add.at(m, (rows, i1), w1)
    return torch.from_numpy(m)


def _check_maps(maps: Tensor, geometry: LayerGeometry) -> Tensor:
    maps = torch.as_tensor(maps)
    if maps.dim() != 3 or tuple(maps.shape[1:]) != tuple(geometry.map_size):
        raise ValueError(
            f"expected maps shaped (I, H_l, W_l) = (I, {geometry.map_size[0]}, {geometry.map_size[1]}) "
            f"to match the layer geometry, got {tuple(maps.shape)}; build them with acts.to_maps(values)."
        )
    return maps


def upsample_map(maps: Tensor, geometry: LayerGeometry, mode: str = "bilinear") -> Tensor:
    """Resample layer maps ``(I, H_l, W_l)`` onto the input grid ``(I, H, W)``.

    ``mode="nearest"`` keeps the dtype (use it for labels; ``-1`` marks missing positions);
    ``mode="bilinear"`` returns float64 with ``NaN`` where no valid position is near.
    """
    if mode not in RESAMPLE_MODES:
        raise ValueError(f"mode must be one of {RESAMPLE_MODES}, got {mode!r}.")
    maps = _check_maps(maps, geometry)
    (Hl, Wl), (H, W) = geometry.map_size, geometry.input_size
    uy = _map_coordinates(H, Hl, geometry.offset[0], geometry.stride[0])  # (H,)
    ux = _map_coordinates(W, Wl, geometry.offset[1], geometry.stride[1])  # (W,)
    if mode == "nearest":
        iy = torch.from_numpy(np.minimum(np.floor(uy + 0.5), Hl - 1).astype(np.int64))  # (H,)
        ix = torch.from_numpy(np.minimum(np.floor(ux + 0.5), Wl - 1).astype(np.int64))  # (W,)
        return maps[:, iy][:, :, ix]  # (I, H, W)
    v = maps.double()
    valid = torch.isfinite(v).double()  # (I, H_l, W_l)
    v = torch.where(valid > 0, v, torch.zeros_like(v))

    Ry = _interpolation_matrix(uy, Hl)  # (H, H_l)
    Rx = _interpolation_matrix(ux, Wl)  # (W, W_l)
    num = Ry @ (v * valid) @ Rx.T  # (I, H, W): two matrix products instead of gathers per axis
    den = Ry @ valid @ Rx.T  # (I, H, W) total weight on valid positions
    out = num / den.clamp_min(1e-300)
    return torch.where(den > 1e-12, out, torch.full_like(out, float("nan")))


def centre_pixels(geometry: LayerGeometry) -> tuple[np.ndarray, np.ndarray]:
    """The input pixel under each map position's centre: rows ``(H_l,)`` and columns ``(W_l,)``,
    ``floor(offset + stride * y + 0.5)`` clipped to the image (a centre on a pixel boundary, e.g.
    offset 0.5, takes the pixel below/right of it)."""
    ys, xs = geometry.centres()
    H, W = geometry.input_size
    py = np.clip(np.floor(ys + 0.5), 0, H - 1).astype(np.int64)
    px = np.clip(np.floor(xs + 0.5), 0, W - 1).astype(np.int64)
    return py, px


def mask_at_positions(masks: Tensor, geometry: LayerGeometry) -> Tensor:
    """Ground-truth label at each map position ``(I, H_l, W_l)``: the mask label of the position's
    centre pixel (:func:`centre_pixels`). ``masks``: ``(I, H, W)`` integer labels, ``-1`` ignored."""
    masks = torch.as_tensor(masks)
    if masks.dim() != 3 or tuple(masks.shape[1:]) != tuple(geometry.input_size):
        raise ValueError(
            f"expected masks shaped (I, H, W) with (H, W) = {tuple(geometry.input_size)} (the layer's "
            f"input size), got {tuple(masks.shape)}."
        )
    py, px = centre_pixels(geometry)
    return masks[:, torch.from_numpy(py)][:, :, torch.from_numpy(px)]
