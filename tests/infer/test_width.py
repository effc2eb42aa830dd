"""The width-aware E-step (features vs whitened forms), cheap merge scoring and bounded temporaries."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dpmodels.data import PlantedMixture
from dpmodels.infer.merge import _merged_stats, _pair_candidate_elbos, candidate_pairs
from dpmodels.infer.natural import initial_params
from dpmodels.infer.result import full_pass
from dpmodels.infer.updates import e_step, elbo_from_stats, m_step
from dpmodels.models import ModelSpec, VariationalParams, empirical_base_measure, quadratic
from dpmodels.models.family import log_predictive_components, quadratic_plan
from dpmodels.priors import WeightPrior, make_prior

PRIORS = [
    WeightPrior("dp", 1.0),
    WeightPrior("dp", 1.0, 0.0, True),
    WeightPrior("pitman_yor", 1.0, 0.3),
    WeightPrior("finite", 2.0),
    make_prior("beta_sticks", concentration=1.5, a=0.5),
]


@pytest.mark.parametrize("cov", ["full", "diag"])
@pytest.mark.parametrize("prior", PRIORS, ids=lambda p: f"{p.kind}-{p.learn_concentration}")
def test_merge_candidates_scored_from_component_terms_equal_a_full_m_step(cov, prior):
    X, _ = PlantedMixture(4, 5, seed=0).sample(600)
    data = torch.tensor(X).unsqueeze(0).repeat(2, 1, 1)
    spec = ModelSpec(prior, empirical_base_measure(data, cov), 10)
    params, base, shift = initial_params(data, spec, torch.Generator().manual_seed(0), 1000, "cpu")
    pairs, _ = candidate_pairs(params, params.dof - base.dof[:, None])
    stats, comp, pair, _ = full_pass(data, shift, params, 10_000, torch.device("cpu"), torch.float64, pairs)
    fast = _pair_candidate_elbos(stats, comp, pair, pairs, params, base, prior)  # (B, P)
    B, P, _ = pairs.shape
    merged = _merged_stats(stats, comp, pair, pairs)  # pair-major (P * B, K, ...)

    def tile(t):
        return t.unsqueeze(0).expand((P,) + t.shape).reshape((P * t.shape[0],) + t.shape[1:])

    base_t = replace(base, **{f: tile(getattr(base, f)) for f in ("mean", "mean_precision", "dof", "scale")})
    slow = elbo_from_stats(merged, m_step(merged, base_t, prior, params.map(tile)), base_t, prior)
    torch.testing.assert_close(fast, slow.reshape(P, B).T, rtol=1e-12, atol=1e-8)


def _random_params(D: int, K: int = 6, B: int = 2, duplicate: bool = True) -> VariationalParams:
    g = torch.Generator().manual_seed(D)
    A = torch.randn(B, K, D, D, generator=g, dtype=torch.float64) / D**0.5
    tril = torch.linalg.cholesky(A @ A.transpose(-1, -2) + torch.eye(D, dtype=torch.float64))
    mean = 3 * torch.randn(B, K, D, generator=g, dtype=torch.float64)
    beta = torch.full((B, K), 5.0, dtype=torch.float64)
    dof = D + 10 * torch.rand(B, K, generator=g, dtype=torch.float64)
    if duplicate:  # the last two components of each fit equal (as empty components at the prior are)
        mean[:, -1], tril[:, -1], beta[:, -1], dof[:, -1] = mean[:, -2], tril[:, -2], beta[:, -2], dof[:, -2]
    ones = torch.ones(B, K - 1, dtype=torch.float64)
    return VariationalParams("full", mean, beta, dof, scale_tril=tril, stick_a=ones, stick_b=ones)


@pytest.mark.parametrize("D", [3, 24])
def test_features_and_whitened_forms_give_the_same_statistics(D):
    params = _random_params(D)
    x = 3 * torch.randn(2, 700, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = {}
    for form in ("features", "whitened"):
        plan = quadratic_plan(params, form)
        assert plan.unique is not None and len(plan.unique) == params.truncation - 1  # one pair deduplicated
        out[form] = e_step(params, x, None, plan)
    (a, log_a), (b, log_b) = out["features"], out["whitened"]
    torch.testing.assert_close(log_a, log_b, rtol=1e-9, atol=1e-9)
    for name in ("count", "s1", "s2", "entropy"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-9, atol=1e-8)
    full = quadratic.plan_quadratic("full", params.mean, params.scale_tril, dedupe=False)
    torch.testing.assert_close(full.mahalanobis(x), quadratic_plan(params).mahalanobis(x))


def test_wide_e_step_builds_no_per_point_second_moments(monkeypatch):
    """At D >= WHITENED_FROM_D neither the responsibilities nor the scatter build vec(x x^T)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("D^2 per-point features built at large D")

    monkeypatch.setattr(quadratic, "second_moments", forbidden)
    D = quadratic.WHITENED_FROM_D
    params = _random_params(D, duplicate=False).map(lambda t: t.float())
    x = torch.randn(2, 300, D)
    stats, _ = e_step(params, x)
    ref = (stats.count.sum(-1) - 300).abs().max()
    assert float(ref) < 1e-3 and stats.s2.shape == (2, params.truncation, D, D)


def test_scatter_blocks_respect_the_memory_bound(monkeypatch):
    monkeypatch.setattr(quadratic, "BLOCK_ELEMENTS", 4096)  # force many small blocks
    params = _random_params(16)
    x = torch.randn(2, 500, 16, dtype=torch.float64)
    r = torch.softmax(torch.randn(2, 500, params.truncation, dtype=torch.float64), -1)
    r[..., 2] = 0.0  # a component without responsibility is skipped, its scatter stays zero
    want = torch.einsum("bnk,bni,bnj->bkij", r, x, x)
    for form in ("features", "whitened"):
        torch.testing.assert_close(quadratic.weighted_scatter(r, x, form), want)


def test_diagonal_predictive_is_blocked_without_changing_it(monkeypatch):
    X, _ = PlantedMixture(3, 4, covariance="diag", seed=0).sample(400)
    data = torch.tensor(X).unsqueeze(0)
    spec = ModelSpec(WeightPrior("dp", 1.0), empirical_base_measure(data, "diag"), 5)
    params = initial_params(data, spec, torch.Generator().manual_seed(0), 400, "cpu")[0]
    want = log_predictive_components(params, data)
    from dpmodels.models import family

    monkeypatch.setattr(family, "BLOCK_ELEMENTS", 64)
    torch.testing.assert_close(log_predictive_components(params, data), want)


def test_full_covariance_too_wide_for_memory_is_one_clear_error(monkeypatch):
    from dpmodels.infer import fit_natural, natural

    monkeypatch.setattr(natural, "available_bytes", lambda device: 2**20)  # 1 MiB free
    data = torch.randn(1, 100, 32)
    spec = ModelSpec(WeightPrior("dp", 1.0), empirical_base_measure(data, "full"), 20)
    with pytest.raises(ValueError, match=r"GiB.*covariance='diag'.*pca_dim"):
        fit_natural(data, spec, options=natural.NaturalOptions(progress=False))
    diag = ModelSpec(WeightPrior("dp", 1.0), empirical_base_measure(data, "diag"), 20)
    natural.check_full_covariance_fits(diag, 1, 32, torch.device("cpu"))  # diagonal: no such limit
