"""The project's default trained network: a :class:`SmallCNN` trained on procedural texture patches.

``texture_cnn()`` trains once (about 10 s on a 2-core CPU with the defaults; 100 % accuracy on a
held-out ``texture_patches(seed=1)`` set when measured) and loads from the cache afterwards.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from ..data.images import ImageSet
from .cache import train_or_load
from .train import TrainReport

__all__ = ["texture_cnn", "texture_training_data"]


def texture_training_data(
    num_per_class: int = 200, size: int = 32, family: str = "A", seed: int = 0, val_fraction: float = 0.15
) -> tuple[ImageSet, ImageSet]:
    """``(train, val)``: ``texture_patches(num_per_class, size, family, seed=seed)`` split by ``seed``.

    ``val`` holds ``val_fraction`` of the patches (for early stopping); test on another seed.
    """
    from ..data.textures import texture_patches

    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must lie in (0, 1), got {val_fraction!r}.")
    data = texture_patches(num_per_class=num_per_class, size=size, family=family, seed=seed)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(val_fraction * len(data)))
    return data.subset(order[n_val:]), data.subset(order[:n_val])


def texture_cnn(
    *,
    family: str = "A",
    num_per_class: int = 200,
    size: int = 32,
    widths: tuple[int, ...] = (16, 32, 64),
    epochs: int = 8,
    batch_size: int = 64,
    augment: bool = False,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, TrainReport]:
    """A ``SmallCNN`` trained on ``texture_patches`` of ``family`` (cached; see ``train_or_load``).

    Data seed and weight seed are both ``seed``; the classes are the family's textures. Returns the
    model in eval mode and its report (``report.loaded_from_cache`` says whether it was trained now).
    """
    from ..data.textures import TEXTURE_FAMILIES

    if family not in TEXTURE_FAMILIES:
        raise ValueError(f"unknown texture family {family!r}; choose one of {sorted(TEXTURE_FAMILIES)}.")
    net = {
        "name": "small_cnn",
        "in_channels": 3,
        "num_classes": len(TEXTURE_FAMILIES[family]),
        "widths": list(widths),
    }
    spec = {
        "generator": "texture_patches",
        "family": family,
        "num_per_class": num_per_class,
        "size": size,
        "seed": seed,
        "val_fraction": 0.15,
    }
    return train_or_load(
        net,
        spec,
        lambda: texture_training_data(num_per_class, size, family, seed),
        {"epochs": epochs, "batch_size": batch_size, "augment": augment},
        seed=seed,
        cache_dir=cache_dir,
        device=device,
        progress=progress,
    )
