"""A planted scene: images with a red square on grey noise, seen through a real conv + max-pool."""

from __future__ import annotations

import pytest
import torch

from dpmodels import DPGMM
from dpmodels.activations import LayerActivations, LayerGeometry

SQUARE = 12


def planted_images(num_images: int = 12, size: int = 32, seed: int = 0):
    """``(I, 3, H, W)`` images and ``(I, H, W)`` masks (1 inside the planted square, 0 outside)."""
    g = torch.Generator().manual_seed(seed)
    images = 0.5 + 0.08 * torch.randn(num_images, 3, size, size, generator=g)
    masks = torch.zeros(num_images, size, size, dtype=torch.long)
    red = torch.tensor([0.9, 0.15, 0.15]).view(3, 1, 1)
    for i in range(num_images):
        y0, x0 = torch.randint(0, size - SQUARE + 1, (2,), generator=g).tolist()
        noise = 0.08 * torch.randn(3, SQUARE, SQUARE, generator=g)
        images[i, :, y0 : y0 + SQUARE, x0 : x0 + SQUARE] = red + noise
        masks[i, y0 : y0 + SQUARE, x0 : x0 + SQUARE] = 1
    return images.clamp(0, 1), masks


def conv_pool_activations(images: torch.Tensor, name: str = "block1") -> LayerActivations:
    """A seeded 3x3 conv (reflect padding) -> ReLU -> 2x2 max-pool; every position is a point.

    Geometry by hand: output (y, x) pools input pixels 2y..2y+1, so it is centred at 2y + 0.5 with
    stride 2; its receptive field is 3 + 1 = 4 pixels."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect"), torch.nn.ReLU(), torch.nn.MaxPool2d(2)
    )
    with torch.no_grad():
        net[0].bias.fill_(1.0)  # keep every channel above the ReLU's threshold
        out = net(images)  # (I, C, H/2, W/2)
    I, C, Hl, Wl = out.shape
    ii, yy, xx = torch.meshgrid(torch.arange(I), torch.arange(Hl), torch.arange(Wl), indexing="ij")
    index = torch.stack([ii.flatten(), yy.flatten(), xx.flatten()], 1)  # (N, 3)
    points = out.permute(0, 2, 3, 1).reshape(-1, C)  # (N, C) in index order
    geometry = LayerGeometry((Hl, Wl), tuple(images.shape[-2:]), (2.0, 2.0), (0.5, 0.5), (4, 4))
    return LayerActivations(name, points, index, geometry, I, image_names=[f"img-{i}" for i in range(I)])


@pytest.fixture(scope="session")
def planted():
    images, masks = planted_images()
    acts = conv_pool_activations(images)
    model = DPGMM(truncation=10, seed=0).fit(acts.points)
    return images, masks, acts, model
