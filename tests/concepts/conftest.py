"""Planted data for the concept tests: each true cluster is a mixture of 2-3 overlapping Gaussians."""

import numpy as np


def nested_mixture(seed: int, n_concepts: int = 3, per: int = 800, dim: int = 2, gap: float = 4.0):
    """Points ``(N, dim)`` and true concept labels ``(N,)``: ``n_concepts`` concepts with centres 15
    units apart, each a row of 2-3 unit-variance Gaussians ``gap`` units apart along a random
    direction (neighbours overlap; a DP mixture gives each its own component)."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(n_concepts):
        centre = np.zeros(dim)
        centre[:2] = 15.0 * np.array([np.cos(2 * np.pi * c / n_concepts), np.sin(2 * np.pi * c / n_concepts)])
        direction = rng.normal(size=dim)
        direction /= np.linalg.norm(direction)
        n_sub = int(rng.integers(2, 4))
        for j in range(n_sub):
            mean = centre + gap * (j - (n_sub - 1) / 2) * direction
            xs.append(mean + rng.normal(size=(per, dim)))
            ys.append(np.full(per, c))
    return np.concatenate(xs), np.concatenate(ys)
