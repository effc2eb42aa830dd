"""A network's own input convention: channel order, per-channel normalisation, the resolution it was
trained at. Pretrained networks carry one as ``model.preprocessing``; extraction applies it to images
in ``[0, 1]`` and the main job records it."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

__all__ = ["Preprocessing", "model_preprocessing", "torchvision_preprocessing"]


@dataclass(frozen=True)
class Preprocessing:
    """``(x - mean) / std`` per channel on RGB images in ``[0, 1]``; ``size``: the side the network was
    trained at (informative: images are not resized here); ``source``: where the convention comes from;
    ``interpolation`` and ``crop_pct``: the resampling and centre-crop share the source names (recorded,
    not applied: images come at the size the data gives)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: int | None = None
    colour: str = "RGB"
    source: str = ""
    interpolation: str | None = None
    crop_pct: float | None = None

    def __post_init__(self):
        mean, std = tuple(float(v) for v in self.mean), tuple(float(v) for v in self.std)
        if len(mean) != len(std) or not mean or min(std) <= 0:
            raise ValueError(f"preprocessing needs as many means as stds (> 0), got mean={mean}, std={std}.")
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def __call__(self, x: Tensor) -> Tensor:
        """``x``: ``(b, C, H, W)`` in ``[0, 1]`` -> normalised ``(b, C, H, W)``."""
        if x.shape[1] != self.channels:
            raise ValueError(
                f"the network expects {self.channels}-channel {self.colour} images, got {x.shape[1]} channels; "
                f"convert them (ImageSet.with_channels({self.channels}))."
            )
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def model_preprocessing(model: nn.Module) -> Preprocessing | None:
    """The ``preprocessing`` a model carries, or ``None`` (inputs used as given, e.g. the small CNN)."""
    pre = getattr(model, "preprocessing", None)
    return pre if isinstance(pre, Preprocessing) else None


def torchvision_preprocessing(weights) -> Preprocessing:
    """The convention of torchvision weights enum member ``weights`` (its ``transforms()`` preset)."""
    preset = weights.transforms()
    crop = getattr(preset, "crop_size", None)
    size = int(crop[0]) if isinstance(crop, (list, tuple)) else (int(crop) if crop else None)
    return Preprocessing(
        preset.mean, preset.std, size, "RGB", f"torchvision {type(weights).__name__}.{weights.name}"
    )
