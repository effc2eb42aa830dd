"""Tiny real image-classification problems for the network tests: coloured oriented gratings."""

from __future__ import annotations

import math

import pytest
import torch

from dpmodels.data import ImageSet


def gratings(num_per_class: int = 40, size: int = 16, num_classes: int = 4, seed: int = 0) -> ImageSet:
    """Class ``k``: a sinusoidal grating at angle ``k * pi / num_classes`` in colour ``k``, random phase.

    Returns ``(I, 3, size, size)`` images in ``[0, 1]`` with targets, in a seeded random order.
    """
    g = torch.Generator().manual_seed(seed)
    I = num_per_class * num_classes
    targets = torch.arange(num_classes).repeat_interleave(num_per_class)  # (I,)
    angle = targets * math.pi / num_classes + 0.1 * torch.randn(I, generator=g)  # (I,)
    phase = 2 * math.pi * torch.rand(I, generator=g)  # (I,)
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    proj = xx * torch.cos(angle).view(-1, 1, 1) + yy * torch.sin(angle).view(-1, 1, 1)  # (I, H, W)
    wave = 0.5 + 0.5 * torch.sin(2 * math.pi * proj / 5.0 + phase.view(-1, 1, 1))  # (I, H, W)
    colours = torch.rand(num_classes, 3, generator=g) * 0.6 + 0.4  # (num_classes, 3)
    images = wave.unsqueeze(1) * colours[targets].view(I, 3, 1, 1)  # (I, 3, H, W)
    images = (images + 0.05 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    order = torch.randperm(I, generator=g)
    return ImageSet(images[order], targets=targets[order], name="gratings")


@pytest.fixture(scope="session")
def grating_data() -> tuple[ImageSet, ImageSet]:
    """``(train, val)``: 160 and 80 gratings of 16x16 pixels, 4 classes, independent seeds."""
    return gratings(40, seed=0), gratings(20, seed=1)
