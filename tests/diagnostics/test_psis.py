"""The PSIS k-hat check of variational fits (Yao et al. 2018)."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from dpmodels import DPGMM
from dpmodels._validation import NotFittedError
from dpmodels.data import PlantedMixture
from dpmodels.diagnostics import explain_pareto_k, vi_pareto_k


def student_t_clusters(n: int, seed: int, df: float = 1.5) -> np.ndarray:
    """Three heavy-tailed (Student-t) clusters in 2-D: a Gaussian mixture is misspecified here."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]])
    return centres[rng.integers(0, 3, n)] + rng.standard_t(df, size=(n, 2))


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_exact_family_gives_constant_weights(covariance):
    """With one component the conjugate family contains the posterior: log p(theta, X) - log q(theta)
    is the constant log p(X), so the weights of every draw agree."""
    X, _ = PlantedMixture(1, 2, covariance=covariance, seed=3).sample(60)
    fit = DPGMM(truncation=1, covariance=covariance, seed=0).fit(X)
    res = vi_pareto_k(fit, X, num_draws=50)
    assert np.ptp(res.log_weights) < 1e-3  # measured ~5e-6 nats (float32 fit parameters)
    assert res.ess > 49.0
    off = copy.copy(fit.posterior_)
    off.params = off.params.map(lambda t: t.clone())
    off.params.mean += 0.5  # a q that is no longer the posterior: the weights must spread out
    assert np.ptp(vi_pareto_k(off, X, num_draws=50).log_weights) > 1.0


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_low_k_on_well_specified_small_data(covariance):
    ks = []
    for seed in range(3):
        X, _ = PlantedMixture(3, 2, covariance=covariance, seed=seed).sample(200)
        fit = DPGMM(truncation=10, covariance=covariance, seed=seed).fit(X)
        ks.append(vi_pareto_k(fit, X, num_draws=400, seed=seed).k_hat)
    assert max(ks) < 0.7, ks


@pytest.mark.slow  # ~20 s
def test_high_k_on_heavy_tailed_clusters():
    ks = []
    for seed in range(3):
        X = student_t_clusters(1000, seed)
        fit = DPGMM(truncation=10, seed=seed).fit(X)
        ks.append(vi_pareto_k(fit, X, num_draws=400, seed=seed).k_hat)
    assert np.median(ks) > 0.7, ks


def test_deterministic_and_errors():
    X, _ = PlantedMixture(2, 2, seed=0).sample(100)
    fit = DPGMM(truncation=5).fit(X)
    a, b = vi_pareto_k(fit, X, num_draws=40, seed=1), vi_pareto_k(fit, X, num_draws=40, seed=1)
    np.testing.assert_array_equal(a.log_weights, b.log_weights)
    assert "k_hat" in a.message
    assert "unreliable" in explain_pareto_k(0.9) and "good" in explain_pareto_k(0.2)
    with pytest.raises(NotFittedError):
        vi_pareto_k(DPGMM(), X)
    with pytest.raises(ValueError, match="num_draws"):
        vi_pareto_k(fit, X, num_draws=5)
    with pytest.raises(ValueError, match="features"):
        vi_pareto_k(fit, X[:, :1])
