"""Maps at large width: the per-chunk quadratic features stay within a fixed memory budget."""

from __future__ import annotations

import torch

from dpmodels.maps import uncertainty
from dpmodels.models import ModelSpec, VariationalParams, empirical_base_measure
from dpmodels.posterior import MixturePosterior
from dpmodels.priors import WeightPrior


def test_wide_full_covariance_maps_keep_feature_chunks_bounded(monkeypatch):
    D, K, N = 120, 3, 2500
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g, dtype=torch.float64)
    spec = ModelSpec(WeightPrior("dp", 1.0), empirical_base_measure(x.unsqueeze(0), "full"), K)
    eye = torch.eye(D, dtype=torch.float64).expand(1, K, D, D) * 30.0
    params = VariationalParams(
        "full",
        torch.randn(1, K, D, generator=g, dtype=torch.float64),
        torch.full((1, K), 100.0, dtype=torch.float64),
        torch.full((1, K), 1000.0, dtype=torch.float64),
        scale_tril=eye.clone(),
        stick_a=torch.ones(1, K - 1, dtype=torch.float64),
        stick_b=torch.ones(1, K - 1, dtype=torch.float64),
    )
    post = MixturePosterior(params, spec, torch.full((1, K), N / K, dtype=torch.float64), N)
    seen = []
    original = uncertainty._features

    def spy(points, full):
        out = original(points, full)
        seen.append(out.numel())
        return out

    monkeypatch.setattr(uncertainty, "_features", spy)
    out = uncertainty.point_uncertainty(post, x, num_draws=2)
    assert max(seen) <= 2**21 and len(seen) > 1  # (n, F) float64 features near 16 MiB at most
    assert out["labels"].shape == (N,) and torch.isfinite(out["novelty"]).all()
