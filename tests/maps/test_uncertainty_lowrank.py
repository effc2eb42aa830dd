"""Maps of a low-rank (factor-analyser) fit: the Woodbury evaluation of every draw's component
densities against the same draws' full covariances ``W W^T + diag(noise)``."""

from __future__ import annotations

import pytest
import torch

from dpmodels import DPGMM
from dpmodels.maps import n_active_draws, point_uncertainty, uncertainty
from dpmodels.maps.lowrank import lowrank_log_density, woodbury_factors
from tests.conftest import correlated_clusters

D, RANK = 8, 2


@pytest.fixture(scope="module")
def fitted():
    X = correlated_clusters(200, 0, D, RANK)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a small fit: 40x faster on one thread than on two busy ones
    try:
        model = DPGMM(covariance="lowrank", rank=RANK, truncation=8, seed=0).fit(X)
    finally:
        torch.set_num_threads(threads)
    return model.posterior_, torch.as_tensor(X)


def _full_reference(post, x: torch.Tensor, num_draws: int, seed: int):
    """(total, aleatoric) from the same draws with dense covariances ``W W^T + diag(noise)``."""
    with torch.random.fork_rng(devices=[]):
        d = post.sample(num_draws, seed=seed, dtype=torch.float64)
    w = d["loadings"][:, 0].double()  # (S, K, D, r)
    cov = w @ w.transpose(-1, -2) + torch.diag_embed(d["covariances"][:, 0].double())  # (S, K, D, D)
    mvn = torch.distributions.MultivariateNormal(d["means"][:, 0].double(), covariance_matrix=cov)
    log_joint = d["log_weights"][:, 0].double() + mvn.log_prob(x.double()[:, None, None, :])  # (n, S, K)
    p = torch.softmax(log_joint, -1)

    def h(q):
        return -(q * torch.log(q.clamp_min(1e-300))).sum(-1)

    return h(p.mean(1)), h(p).mean(1)


def test_woodbury_density_matches_the_dense_gaussian():
    g = torch.Generator().manual_seed(0)
    M, K, r, N = 3, 4, 2, 9
    mu = torch.randn(M, K, D, generator=g, dtype=torch.float64)
    lam = torch.rand(M, K, D, generator=g, dtype=torch.float64) + 0.2
    w = torch.randn(M, K, D, r, generator=g, dtype=torch.float64)
    x = 2 * torch.randn(N, D, generator=g, dtype=torch.float64)
    cov = w @ w.transpose(-1, -2) + torch.diag_embed(1 / lam)
    ref = torch.distributions.MultivariateNormal(mu, covariance_matrix=cov).log_prob(x[:, None, None])
    torch.testing.assert_close(lowrank_log_density(x, mu, lam, w), ref.permute(1, 0, 2), rtol=0, atol=1e-10)
    x3 = torch.randn(M, N, D, generator=g, dtype=torch.float64)  # one data set per draw
    ref3 = torch.distributions.MultivariateNormal(mu[:, None], covariance_matrix=cov[:, None]).log_prob(
        x3[:, :, None]
    )
    torch.testing.assert_close(lowrank_log_density(x3, mu, lam, w), ref3, rtol=0, atol=1e-10)
    a, log_det = woodbury_factors(lam, w)  # Sigma^-1 = Lambda - A^T A
    torch.testing.assert_close(torch.diag_embed(lam) - a.transpose(-1, -2) @ a, torch.linalg.inv(cov))
    torch.testing.assert_close(log_det, -torch.logdet(cov))


def test_maps_from_lowrank_draws_agree_with_full_covariance_maps(fitted):
    post, X = fitted
    assert post.covariance_type == "lowrank"
    out = point_uncertainty(post, X, num_draws=6, seed=4, chunk_size=250)
    total, aleatoric = _full_reference(post, X, 6, 4)
    torch.testing.assert_close(out["aleatoric"], aleatoric, rtol=0, atol=1e-9)
    torch.testing.assert_close(out["epistemic"], (total - aleatoric).clamp_min(0), rtol=0, atol=1e-9)
    assert out["labels"].shape == (X.shape[0],) and out["labels"].dtype == torch.int64
    for k in ("entropy", "epistemic", "aleatoric", "novelty"):
        assert out[k].shape == (X.shape[0],) and torch.isfinite(out[k]).all()
    # the planted clusters are separated: the points are sure of their cluster
    assert float(out["entropy"].mean()) < 0.05


def test_lowrank_maps_do_not_depend_on_the_chunking(fitted):
    post, X = fitted
    a = point_uncertainty(post, X, num_draws=4, seed=1)  # the default chunk (all points)
    b = point_uncertainty(post, X, num_draws=4, seed=1, chunk_size=97)
    for k in ("epistemic", "aleatoric"):
        torch.testing.assert_close(a[k], b[k], atol=1e-12, rtol=0)


def test_lowrank_pruning_falls_back_to_the_exact_computation(fitted, monkeypatch):
    post, X = fitted
    exact = point_uncertainty(post, X, num_draws=4, seed=2)
    monkeypatch.setattr(uncertainty, "NEGLIGIBLE_WEIGHT", 0.2)  # prunes real components
    terms = uncertainty._draw_terms(post, 4, 2)
    assert terms["woodbury"].shape[-1] == RANK and 0 < int(terms["keep"].sum()) < post.truncation
    pruned = point_uncertainty(post, X, num_draws=4, seed=2)
    for k in ("epistemic", "aleatoric"):
        torch.testing.assert_close(pruned[k], exact[k], atol=1e-12, rtol=0)


def test_n_active_draws_of_a_lowrank_fit(fitted):
    post, _ = fitted
    k = n_active_draws(post, num_draws=50)
    assert k.shape == (50,) and (k >= 3).all()
