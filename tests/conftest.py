"""Shared fixtures: small planted-cluster problems and model specs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpmodels.models import ModelSpec, empirical_base_measure
from dpmodels.priors import WeightPrior, make_prior

PRIORS = {
    "dp": WeightPrior("dp", 1.0),
    "pitman_yor": WeightPrior("pitman_yor", 1.0, 0.3),
    "finite": WeightPrior("finite", 2.0),
    "dp_learned": WeightPrior("dp", 1.0, learn_concentration=True),
    "beta_sticks": make_prior("beta_sticks", concentration=1.5, a=0.5),
}


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield


def two_blobs(n1: int = 40, n2: int = 30, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    """Two separated 2-D blobs as ``(1, N, 2)``."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n1, 2, generator=g, dtype=dtype) - 3.0
    b = 0.5 * torch.randn(n2, 2, generator=g, dtype=dtype) + 3.0
    return torch.cat([a, b]).unsqueeze(0)


def make_spec(data: torch.Tensor, prior: WeightPrior, covariance: str, truncation: int) -> ModelSpec:
    return ModelSpec(prior, empirical_base_measure(data, covariance), truncation)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where CUDA is available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def correlated_clusters(n: int = 150, seed: int = 0, features: int = 8, rank: int = 2) -> np.ndarray:
    """Three separated clusters in ``features`` dimensions whose spread lies mostly along ``rank``
    directions each (factor analysers: ``centre + W y + 0.3 noise``), float32 ``(3 n, features)``."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(3):
        loadings = 1.5 * rng.normal(size=(features, rank))
        centre = 8.0 * rng.normal(size=features)
        parts.append(centre + rng.normal(size=(n, rank)) @ loadings.T + 0.3 * rng.normal(size=(n, features)))
    return np.concatenate(parts).astype(np.float32)
