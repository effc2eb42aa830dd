"""The blocked Gibbs reference sampler: layout, agreement with VI, simulation-based calibration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpmodels import DPGMM
from dpmodels.data import PlantedMixture
from dpmodels.diagnostics import (
    gibbs_like,
    gibbs_sample,
    loo,
    rank_uniformity_pvalue,
    sbc_ranks,
    summarize,
    to_inference_data,
)
from dpmodels.models.base_measure import BaseMeasure
from dpmodels.priors import WeightPrior, make_prior


def fixed_base(covariance: str, D: int) -> BaseMeasure:
    """A data-independent base measure (SBC needs a prior that does not look at the data)."""
    f64 = torch.float64
    scale = torch.eye(D, dtype=f64)[None] if covariance == "full" else torch.ones(1, D, dtype=f64)
    return BaseMeasure(
        covariance,
        torch.zeros(1, D, dtype=f64),
        torch.ones(1, dtype=f64),
        torch.full((1,), D + 2.0, dtype=f64),
        scale,
    )


def test_layout_matches_variational_inference_data():
    X, _ = PlantedMixture(2, 2, seed=0).sample(80)
    g = gibbs_sample(X, truncation=5, num_chains=2, num_samples=20, warmup=10, init_components=2)
    vi = to_inference_data([DPGMM(truncation=5, seed=s).fit(X) for s in range(2)], X, num_draws=20)
    for name in ("weights", "means", "covariances", "sorted_weights", "weight_entropy", "n_active"):
        assert g.posterior[name].dims == vi.posterior[name].dims
        assert g.posterior[name].shape == vi.posterior[name].shape
    assert g.log_likelihood["x"].shape == (2, 20, 80)
    assert g.posterior.attrs["source"] == "gibbs" and g.sample_stats["n_occupied"].dims == ("chain", "draw")
    again = gibbs_sample(X, truncation=5, num_chains=2, num_samples=20, warmup=10, init_components=2)
    np.testing.assert_array_equal(g.posterior["weights"].values, again.posterior["weights"].values)
    assert loo(g).pareto_k.shape == (80,)  # 40 draws: ArviZ would warn at k > 0.38


def test_learned_concentration_and_errors():
    X, _ = PlantedMixture(2, 1, covariance="diag", seed=1).sample(60)
    g = gibbs_sample(
        X, truncation=4, covariance="diag", learn_concentration=True, num_chains=2, num_samples=10, warmup=5
    )
    assert g.posterior["concentration"].dims == ("chain", "draw")
    assert (g.posterior["concentration"].values > 0).all()
    with pytest.raises(ValueError, match="only for prior='dp'"):
        gibbs_sample(X, prior="finite", learn_concentration=True, num_samples=2, warmup=0)
    with pytest.raises(ValueError, match="warmup"):
        gibbs_sample(X, warmup=-1)
    with pytest.raises(ValueError, match="num_chains"):
        gibbs_sample(X, num_chains=0)


@pytest.mark.slow
@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_gibbs_agrees_with_variational_fit(covariance):
    """Planted data, 3 well-separated clusters: the number of active components and the sorted
    weights agree (|difference of posterior means| < 0.2 components and < 0.03 in weight; the
    posterior sd of each weight is about 0.025), and the invariant quantities have R-hat < 1.05."""
    X, _ = PlantedMixture(3, 2, covariance=covariance, seed=1).sample(300)
    fits = [DPGMM(truncation=10, covariance=covariance, seed=s).fit(X) for s in range(4)]
    vi = to_inference_data(fits, X, num_draws=200)
    g = gibbs_like(fits[0], X, num_chains=4, num_samples=250, warmup=150, seed=0)
    table = summarize(g, max_components=3)
    assert (
        table.loc[["sorted_weights[0]", "sorted_weights[1]", "sorted_weights[2]", "weight_entropy"], "r_hat"]
        < 1.05
    ).all()
    assert abs(float(g.posterior["n_active"].mean()) - float(vi.posterior["n_active"].mean())) < 0.2
    sw_g = g.posterior["sorted_weights"].values[..., :3].mean((0, 1))
    sw_v = vi.posterior["sorted_weights"].values[..., :3].mean((0, 1))
    np.testing.assert_allclose(sw_g, sw_v, atol=0.03)


@pytest.mark.slow
def test_simulation_based_calibration():
    """Talts et al. (2018): ranks of true statistics among 19 thinned draws are uniform (chi-square
    on 10 bins, 150 replications, each p > 0.001). K = 1 (full and diag: every component parameter
    is identified), and K = 3 with DP, Pitman–Yor, finite, learned-concentration and two-parameter
    stick-breaking weight priors on label-invariant statistics. Fixed seeds: deterministic, yet a wrong conditional fails."""
    cases = [
        (WeightPrior("dp"), "full", 2, 1, 5),
        (WeightPrior("dp"), "diag", 2, 1, 5),
        (WeightPrior("dp"), "diag", 1, 3, 5),
        (WeightPrior("pitman_yor", 1.0, 0.3), "diag", 1, 3, 5),
        (WeightPrior("finite", 2.0), "full", 1, 3, 5),
        (WeightPrior("dp", learn_concentration=True), "diag", 1, 3, 40),  # alpha mixes slowly: thin more
        (make_prior("beta_sticks", concentration=1.5, a=0.5), "diag", 1, 3, 5),
    ]
    for i, (prior, cov, D, K, thin) in enumerate(cases):
        ranks = sbc_ranks(prior, fixed_base(cov, D), K, num_points=15, replications=150, thin=thin, seed=i)
        for name, r in ranks.items():
            assert r.min() >= 0 and r.max() <= 19
            p = rank_uniformity_pvalue(r, 19)
            assert p > 1e-3, (prior.kind, cov, K, name, p)
