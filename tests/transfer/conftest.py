"""Fixtures for the transfer tests: a planted Gaussian-mixture sampler, a tiny CNN and a tiny
grating classification task, all generated here and seeded."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from dpmodels.data.images import ImageSet


class Mixture:
    """Three well-separated unit-variance Gaussian clusters in ``D`` dimensions; ``sample`` can plant a new far
    cluster, drop a cluster, or shift everything along the first axis."""

    def __init__(self, D: int = 4, seed: int = 0):
        self.D, self.rng = D, np.random.default_rng(seed)
        while True:  # well separated (>= 7 sd apart), so that "a cluster" is unambiguous
            self.centres = self.rng.normal(size=(3, D)) * 4.0  # (3, D)
            gaps = np.linalg.norm(self.centres[:, None] - self.centres[None], axis=-1)[np.triu_indices(3, 1)]
            if gaps.min() >= 7.0:
                break

    def sample(self, n: int, new: float = 0.0, shift: float = 0.0, drop: int | None = None) -> np.ndarray:
        ks = [k for k in range(3) if k != drop]
        x = self.centres[self.rng.choice(ks, size=n)] + self.rng.normal(size=(n, self.D))  # (n, D)
        planted = int(round(new * n))
        if planted:
            far = np.zeros(self.D)
            far[0] = np.abs(self.centres[:, 0]).max() + 12.0
            x[:planted] = far + 0.7 * self.rng.normal(size=(planted, self.D))
        x[:, 0] += shift
        return x


@pytest.fixture
def mixture():
    return Mixture


def tiny_cnn(num_classes: int = 4, in_channels: int = 1, widths=(4, 8)) -> nn.Sequential:
    """Two conv blocks (conv, BatchNorm, in-place ReLU, pool), global pool, linear head."""
    a, b = widths
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(in_channels, a, 3, padding=1), nn.BatchNorm2d(a), nn.ReLU(inplace=True)),
        nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(inplace=True)),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(b, num_classes),
    )


def gratings(n: int, classes: int = 4, freq: float = 0.8, seed: int = 0, size: int = 12) -> ImageSet:
    """Noisy sinusoidal gratings; the class is the orientation (``classes`` angles in [0, pi))."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(classes, (n,), generator=g)
    angle = y.float() * math.pi / classes + 0.05 * torch.randn(n, generator=g)
    phase = 2 * math.pi * torch.rand(n, generator=g)
    yy, xx = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    arg = freq * (torch.cos(angle)[:, None, None] * xx + torch.sin(angle)[:, None, None] * yy)
    img = 0.5 + 0.35 * torch.sin(arg + phase[:, None, None]) + 0.05 * torch.randn(n, size, size, generator=g)
    return ImageSet(img.clamp(0, 1).unsqueeze(1), targets=y, name=f"gratings-f{freq}")


@pytest.fixture(scope="session")
def cnn():
    return tiny_cnn


@pytest.fixture(scope="session")
def grating_set():
    return gratings


@pytest.fixture(scope="module")
def single_thread():
    """Tiny networks train 10x faster on one thread than on two busy ones; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
