"""``ImageSet``: the one container every image source returns and every consumer takes.

Images are float32 in ``[0, 1]``, shaped ``(I, C, H, W)`` with ``C`` 1 (grayscale) or 3 (RGB).
Optional per-pixel masks ``(I, H, W)`` hold integer region labels (``-1`` = unlabelled, ignored by
every metric); optional image-level targets ``(I,)`` hold class ids for training classifiers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_LABEL", "ImageSet"]

IGNORE_LABEL = -1


@dataclass
class ImageSet:
    """Images with optional ground truth.

    Attributes
    ----------
    images : ``(I, C, H, W)`` float32 in ``[0, 1]``, ``C`` in ``{1, 3}``.
    masks : ``(I, H, W)`` int64 region labels, ``-1`` where unlabelled; ``None`` without ground truth.
    targets : ``(I,)`` int64 image-level classes (e.g. the texture of a patch); ``None`` if not known.
    names : one identifier per image (file stem, or ``"<dataset>-<index>"``).
    mask_names : what each mask label means (``mask_names[k]`` for label ``k``), when known.
    class_names : what each target class means, when known.
    name : the data set's name, used in logs, figures and file names.
    meta : free-form provenance (generator settings, seed, source folder, resize rule).
    """

    images: Tensor
    masks: Tensor | None = None
    targets: Tensor | None = None
    names: list[str] = field(default_factory=list)
    mask_names: list[str] | None = None
    class_names: list[str] | None = None
    name: str = "images"
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        x = self.images
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] not in (1, 3):
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"{self.name}: images must be a tensor (I, C, H, W) with C = 1 or 3, got {shape}."
            )
        if not x.is_floating_point():
            raise ValueError(f"{self.name}: images must be floating point in [0, 1], got dtype {x.dtype}.")
        self.images = x.float()
        I, _, H, W = self.images.shape
        if I == 0:
            raise ValueError(f"{self.name}: the image set is empty (0 images).")
        if not self.names:
            self.names = [f"{self.name}-{i}" for i in range(I)]
        if len(self.names) != I:
            raise ValueError(f"{self.name}: {len(self.names)} names for {I} images.")
        if self.masks is not None:
            m = self.masks
            if not isinstance(m, Tensor) or tuple(m.shape) != (I, H, W):
                shape = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
                raise ValueError(
                    f"{self.name}: masks must have shape (I, H, W) = {(I, H, W)} to match the images, "
                    f"got {shape}."
                )
            if m.is_floating_point():
                raise ValueError(f"{self.name}: masks must hold integer labels, got dtype {m.dtype}.")
            self.masks = m.long()
            if bool((self.masks < IGNORE_LABEL).any()):
                raise ValueError(f"{self.name}: mask labels must be >= 0 (or -1 for unlabelled).")
        if self.targets is not None:
            t = torch.as_tensor(self.targets)
            if tuple(t.shape) != (I,):
                raise ValueError(f"{self.name}: targets must have shape ({I},), got {tuple(t.shape)}.")
            self.targets = t.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def size(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""
        return tuple(self.images.shape[-2:])

    @property
    def num_mask_labels(self) -> int:
        """Number of distinct region labels (``max + 1``), 0 without masks."""
        if self.masks is None:
            return 0
        return int(self.masks.max().clamp(min=-1)) + 1

    def subset(self, index) -> ImageSet:
        """The images at ``index`` (a slice, a list of ints or a boolean/int tensor)."""
        idx = torch.arange(len(self))[index] if not isinstance(index, Tensor) else index
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx).flatten()
        idx = idx.reshape(-1)
        return ImageSet(
            images=self.images[idx],
            masks=None if self.masks is None else self.masks[idx],
            targets=None if self.targets is None else self.targets[idx],
            names=[self.names[int(i)] for i in idx],
            mask_names=self.mask_names,
            class_names=self.class_names,
            name=self.name,
            meta=dict(self.meta),
        )

    def with_channels(self, channels: int) -> ImageSet:
        """The same images with 1 (luminance) or 3 (grey replicated) channels."""
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}.")
        x = self.images
        if channels == x.shape[1]:
            return self
        if channels == 3:
            x = x.expand(-1, 3, -1, -1).contiguous()
        else:  # ITU-R BT.601 luma
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return ImageSet(
            x,
            self.masks,
            self.targets,
            list(self.names),
            self.mask_names,
            self.class_names,
            self.name,
            dict(self.meta),
        )

    def resized(self, size: int) -> ImageSet:
        """The images resized to ``(size, size)`` (bilinear, antialiased; masks by nearest
        neighbour); ``meta["resized_to"]`` records it. Returns ``self`` when already that size."""
        if self.size == (size, size):
            return self
        pixels = F.interpolate(
            self.images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        ).clamp(0, 1)
        masks = None
        if self.masks is not None:
            masks = F.interpolate(self.masks[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
        meta = {**self.meta, "resized_to": size}
        return ImageSet(
            pixels, masks, self.targets, self.names, self.mask_names, self.class_names, self.name, meta
        )
