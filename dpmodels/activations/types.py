"""What extraction returns: a layer's position vectors, their index back to (image, y, x), and the
layer's geometry relative to the input, so that any per-position value can be drawn as a map at
input resolution.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

__all__ = ["FeatureTransform", "LayerActivations", "LayerGeometry"]


@dataclass(frozen=True)
class LayerGeometry:
    """Where a layer's map positions sit on the input image.

    Map position ``(y, x)`` is centred on input pixel coordinates
    ``(offset[0] + stride[0] * y, offset[1] + stride[1] * x)`` (pixel centres are integers, so
    ``offset`` may be fractional, e.g. 0.5 after a 2x2 pooling) and sees the input window
    ``receptive_field`` pixels high and wide around that centre (clipped at the image border).
    """

    map_size: tuple[int, int]  # (H_l, W_l)
    input_size: tuple[int, int]  # (H, W)
    stride: tuple[float, float]  # input pixels per map step, (y, x)
    offset: tuple[float, float]  # input coordinate of map position (0, 0), (y, x)
    receptive_field: tuple[int, int]  # (height, width) in input pixels

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """Input coordinates of the map rows ``(H_l,)`` and columns ``(W_l,)``."""
        ys = self.offset[0] + self.stride[0] * np.arange(self.map_size[0])
        xs = self.offset[1] + self.stride[1] * np.arange(self.map_size[1])
        return ys, xs

    def patch_box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """``(y0, y1, x0, x1)``: the receptive field of map position ``(y, x)`` clipped to the image
        (half-open, usable as ``image[..., y0:y1, x0:x1]``)."""
        cy = self.offset[0] + self.stride[0] * y
        cx = self.offset[1] + self.stride[1] * x
        hy, hx = self.receptive_field[0] / 2.0, self.receptive_field[1] / 2.0
        H, W = self.input_size
        y0, y1 = int(np.floor(cy - hy + 0.5)), int(np.floor(cy + hy + 0.5))
        x0, x1 = int(np.floor(cx - hx + 0.5)), int(np.floor(cx + hx + 0.5))
        return max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)


@dataclass
class FeatureTransform:
    """Per-layer preprocessing fitted on the source activations: optional per-channel
    standardisation, then optional PCA to ``d`` dimensions. ``apply`` maps new activations of the
    same layer (another data set, for transfer) into the same coordinates."""

    channels: int  # C, the layer's raw channel count
    mean: Tensor | None = None  # (C,) standardisation centre
    scale: Tensor | None = None  # (C,) standardisation scale (std, floored)
    pca_mean: Tensor | None = None  # (C,) centre before projection
    components: Tensor | None = None  # (d, C) PCA directions, rows orthonormal
    explained_variance_ratio: Tensor | None = None  # (d,)

    @property
    def out_features(self) -> int:
        return self.channels if self.components is None else self.components.shape[0]

    def apply(self, x: Tensor) -> Tensor:
        """``x``: ``(n, C)`` raw activations of this layer -> ``(n, D)`` float32."""
        if x.dim() != 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"expected activations (n, {self.channels}) of the layer this transform was fitted on, "
                f"got shape {tuple(x.shape)}."
            )
        x = x.float()
        if self.mean is not None:
            x = (x - self.mean) / self.scale
        if self.components is not None:
            x = (x - self.pca_mean) @ self.components.T
        return x


@dataclass
class LayerActivations:
    """One layer's position vectors.

    Attributes
    ----------
    name : the layer's node name (as ``torchvision.models.feature_extraction`` names it).
    points : ``(N, D)`` float32 position vectors after ``transform``: a tensor, or a read-only
        ``np.memmap`` / ``.npy`` path when stored on disk (``dpmodels.data.PointSource`` reads both).
    index : ``(N, 3)`` int64 ``(image, y, x)`` of every point, ``y, x`` in map coordinates.
    geometry : the layer's map size, stride, offset and receptive field on the input.
    num_images : ``I``, number of images extracted (points may cover a subsample of positions).
    transform : the standardisation/PCA fitted on this layer (``None`` = raw channels).
    image_names : one name per image, as in the ``ImageSet``.
    meta : extraction settings (subsampling, seed, model name, store path).
    """

    name: str
    points: Tensor | np.ndarray
    index: Tensor
    geometry: LayerGeometry
    num_images: int
    transform: FeatureTransform | None = None
    image_names: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def num_points(self) -> int:
        return int(self.index.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.points.shape[1])

    def tensor(self) -> Tensor:
        """All points as one in-memory float32 tensor ``(N, D)`` (reads a disk store fully)."""
        if isinstance(self.points, Tensor):
            return self.points.float()
        # a copy: a read-only memory map would give a non-writable tensor (and a warning)
        return torch.from_numpy(np.array(self.points, dtype=np.float32, order="C"))

    def to_maps(self, values, fill=float("nan")) -> Tensor:
        """Scatter per-point ``values`` ``(N,)`` or ``(N, k)`` onto ``(I, H_l, W_l)`` or
        ``(I, H_l, W_l, k)`` maps; positions without a point get ``fill``."""
        v = torch.as_tensor(values)
        if v.shape[0] != self.num_points:
            raise ValueError(
                f"layer {self.name!r}: expected one value per point ({self.num_points}), got {v.shape[0]}."
            )
        H, W = self.geometry.map_size
        if not (v.is_floating_point() or v.is_complex()) and fill != fill:  # NaN fill for integer values
            fill = -1
        out = torch.full((self.num_images, H, W, *v.shape[1:]), fill, dtype=v.dtype)
        i, y, x = self.index.long().unbind(1)
        out[i, y, x] = v
        return out
