"""scikit-learn's handwritten digits (ships with the package, offline) as an ``ImageSet`` with stroke masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from .images import ImageSet

__all__ = ["STROKE_THRESHOLD", "digits_images"]

STROKE_THRESHOLD = 0.4
"""Default intensity (of 1, after upsampling) above which a pixel counts as stroke."""


def digits_images(
    num_images: int | None = None, size: int = 32, threshold: float = STROKE_THRESHOLD, seed: int = 0
) -> ImageSet:
    """The 1797 8x8 digits of ``sklearn.datasets.load_digits``, upsampled to ``(I, 1, size, size)``.

    Intensities (0..16 in the source, ink bright on a dark background) are scaled to ``[0, 1]`` and
    upsampled bilinearly (``align_corners=False``). ``targets`` are the digits 0-9. ``masks`` are 1
    (``"stroke"``) where the upsampled intensity exceeds ``threshold`` and 0 (``"background"``)
    elsewhere. The images come in a seeded random order; ``num_images`` keeps the first ones of that
    order (``None``: all 1797). ``names`` are ``"digits-<index in load_digits>"``.
    """
    if not isinstance(size, int) or size < 8:
        raise ValueError(f"size must be an int >= 8 (the source digits are 8x8), got {size!r}.")
    if not 0.0 < threshold < 1.0:
        raise ValueError(
            f"threshold must lie in (0, 1) (intensities are scaled to [0, 1]), got {threshold!r}."
        )
    bunch = load_digits()
    total = len(bunch.target)
    if num_images is None:
        num_images = total
    if not 1 <= num_images <= total:
        raise ValueError(f"num_images must be between 1 and {total} (or None for all), got {num_images!r}.")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:num_images]  # (I,)
    small = torch.as_tensor(bunch.images, dtype=torch.float32)[order].unsqueeze(1) / 16.0  # (I, 1, 8, 8)
    images = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
    masks = (images[:, 0] > threshold).long()  # (I, H, W) 1 = stroke
    targets = torch.as_tensor(bunch.target)[order].long()
    return ImageSet(
        images,
        masks,
        targets,
        [f"digits-{int(i)}" for i in order],
        ["background", "stroke"],
        [str(d) for d in range(10)],
        "digits",
        {"source": "sklearn.datasets.load_digits", "size": size, "threshold": threshold, "seed": seed},
    )
