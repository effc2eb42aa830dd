"""Low-rank components (a DP mixture of factor analysers) in the natural engine: the update and
bound against the diagonal type at rank 0, merges scored exactly, the whitened factor frame,
recovery of planted factor analysers, the predictive density, checkpoints and bad input."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from dpmodels import DPGMM, TruncationWarning
from dpmodels.infer import NaturalOptions, fit_natural
from dpmodels.infer.init import initial_stats
from dpmodels.infer.merge import _best_m_step, _merged_stats, _pair_candidate_elbos, candidate_pairs
from dpmodels.infer.natural import initial_params
from dpmodels.infer.result import full_pass
from dpmodels.infer.updates import (
    Stats,
    best_factor_frame,
    component_elbo_terms,
    component_update,
    e_step,
    elbo_from_stats,
    m_step,
)
from dpmodels.models import ModelSpec, empirical_base_measure
from dpmodels.models.family import expected_log_weights
from dpmodels.models.lowrank import (
    factor_statistics,
    lowrank_covariances,
    lowrank_log_predictive,
    lowrank_plan,
    pack_stats,
    scale_factor_stats,
    unpack_stats,
    whiten_factor_stats,
)
from dpmodels.priors import WeightPrior, make_prior


def planted_factor_analysers(seed: int, D: int = 16, r: int = 2, K: int = 3, n: int = 800):
    """``K`` clusters, each ``mu_k + W_k y + noise`` with ``rank r`` loadings: points and labels."""
    rng = np.random.default_rng(seed)
    X, y = [], []
    for k in range(K):
        W = rng.normal(size=(D, r)) * 2.0
        mu = rng.normal(size=D) * 6.0
        X.append(rng.normal(size=(n, r)) @ W.T + mu + rng.normal(size=(n, D)) * 0.5)
        y += [k] * n
    order = rng.permutation(K * n)
    return np.concatenate(X)[order].astype(np.float32), np.array(y)[order]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small problems: one thread is fastest and steady on a busy machine
    yield
    torch.set_num_threads(threads)


def test_rank_zero_is_the_diagonal_type_exactly():
    torch.manual_seed(0)
    x = torch.randn(2, 400, 6, dtype=torch.float64) + torch.randint(0, 3, (2, 400, 1)).double() * 3
    base = empirical_base_measure(x, "diag")
    base = replace(base, mean=torch.zeros_like(base.mean))
    prior = make_prior("dp", concentration=1.0)
    stats = initial_stats(x, 8, 400, torch.Generator().manual_seed(0), covariance="diag")
    low_base = replace(base, covariance="lowrank", rank=0)
    low_stats = Stats(
        stats.count,
        *pack_stats(stats.s1.unsqueeze(-1), stats.s2, stats.count[..., None, None]),
        stats.entropy,
    )
    diag, low = m_step(stats, base, prior), m_step(low_stats, low_base, prior)
    for _ in range(3):
        s_d, log_r_d = e_step(diag, x)
        s_l, log_r_l = e_step(low, x)
        torch.testing.assert_close(log_r_l, log_r_d, rtol=0, atol=1e-10)
        diag, low = m_step(s_d, base, prior, diag), m_step(s_l, low_base, prior, low)
        torch.testing.assert_close(low.scale, diag.scale, rtol=1e-12, atol=0)
        torch.testing.assert_close(
            elbo_from_stats(s_l, low, low_base, prior),
            elbo_from_stats(s_d, diag, base, prior),
            rtol=1e-12,
            atol=0,
        )


def _pass_setup(prior, seed: int = 0):
    X, _ = planted_factor_analysers(seed, D=8, r=2, K=3, n=200)
    data = torch.tensor(X, dtype=torch.float64).unsqueeze(0).repeat(2, 1, 1)
    spec = ModelSpec(prior, empirical_base_measure(data, "lowrank", rank=2), 10)
    params, base, shift = initial_params(data, spec, torch.Generator().manual_seed(seed), 1000, "cpu")
    return data, params, base, shift


@pytest.mark.parametrize(
    "prior",
    [WeightPrior("dp", 1.0), WeightPrior("finite", 2.0), WeightPrior("pitman_yor", 1.0, 0.3)],
    ids=str,
)
def test_merge_candidates_are_scored_as_they_are_applied(prior):
    """A candidate's fast score (component terms, factors of the absorbed component re-expressed in
    the kept one's coordinates, whitened where that helps) equals the exact ELBO of the merge."""
    data, params, base, shift = _pass_setup(prior)
    pairs, _ = candidate_pairs(params, params.dof - base.dof[:, None])
    stats, comp, pair, moved = full_pass(
        data, shift, params, 10_000, torch.device("cpu"), torch.float64, pairs
    )
    assert moved is not None and moved.count.shape == pairs.shape[:2]
    fast = _pair_candidate_elbos(stats, comp, pair, pairs, params, base, prior, moved)
    B, P, _ = pairs.shape
    merged = _merged_stats(stats, comp, pair, pairs, moved)

    def tile(t):
        return t.unsqueeze(0).expand((P,) + t.shape).reshape((P * t.shape[0],) + t.shape[1:])

    base_t = base.map(tile)
    _, slow = _best_m_step(merged, base_t, prior, params.map(tile))
    torch.testing.assert_close(fast, slow.reshape(P, B).T, rtol=1e-10, atol=1e-6)


def test_moved_statistics_are_those_of_the_points_in_the_kept_components_coordinates():
    data, params, base, shift = _pass_setup(WeightPrior("dp", 1.0))
    pairs, _ = candidate_pairs(params, params.dof - base.dof[:, None])
    stats, _, _, moved = full_pass(data, shift, params, 10_000, torch.device("cpu"), torch.float64, pairs)
    x = data - shift.unsqueeze(1)
    plan = lowrank_plan(params)
    loglik, ey = plan.factors(x)
    from dpmodels.models.family import expected_log_weights

    r = torch.softmax(expected_log_weights(params).unsqueeze(1) + loglik, -1)
    b, p = 1, 0
    j, k = pairs[b, p].tolist()
    w = r[b, :, k]
    e = ey[b, j].T  # (n, r): every point's factors under j
    sxy, sxx, syy = unpack_stats(moved.s1[b : b + 1, p : p + 1], moved.s2[b : b + 1, p : p + 1])
    torch.testing.assert_close(sxy[0, 0, :, :-1], (w[:, None] * x[b]).T @ e)
    torch.testing.assert_close(syy[0, 0, :-1, :-1], w.sum() * plan.p_inv[b, j] + (w[:, None] * e).T @ e)
    torch.testing.assert_close(sxx[0, 0], (w[:, None] * x[b] ** 2).sum(0))
    half = 0.5 * w.sum() * (plan.log_det_p[b, k] - plan.log_det_p[b, j])
    torch.testing.assert_close(moved.entropy[b, p], half)


def test_whitening_is_an_affine_map_of_the_factors_posterior():
    data, params, base, shift = _pass_setup(WeightPrior("dp", 1.0), seed=1)
    x = (data - shift.unsqueeze(1))[:1]
    params = params.map(lambda t: t[:1])
    plan = lowrank_plan(params)
    loglik, ey = plan.factors(x)
    r = torch.softmax(loglik, -1)
    count, sxy, sxx, syy, h_y = factor_statistics(plan, x, r, ey)
    s1, s2, gain = whiten_factor_stats(count, *pack_stats(sxy, sxx, syy))
    # the same statistics computed from the transformed posterior y' = R (y - c)
    k = int(count[0].argmax())
    n_k = count[0, k]
    c = syy[0, k, :-1, -1] / n_k
    sigma = syy[0, k, :-1, :-1] / n_k - torch.outer(c, c)
    R = torch.linalg.inv(torch.linalg.cholesky(sigma))
    e2 = (R @ (ey[0, k] - c[:, None])).T  # (n, r)
    w = r[0, :, k]
    w_sxy, _, w_syy = unpack_stats(s1, s2)
    torch.testing.assert_close(w_sxy[0, k, :, :-1], (w[:, None] * x[0]).T @ e2)
    direct = n_k * R @ plan.p_inv[0, k] @ R.T + (w[:, None] * e2).T @ e2
    torch.testing.assert_close(w_syy[0, k, :-1, :-1], direct)
    torch.testing.assert_close(w_syy[0, k, :-1, :-1] / n_k, torch.eye(2, dtype=torch.float64))
    torch.testing.assert_close(gain[0, k], n_k * torch.logdet(R))


@pytest.mark.parametrize(
    "prior",
    [WeightPrior("dp", 1.0), WeightPrior("finite", 2.0), WeightPrior("pitman_yor", 1.0, 0.2)],
    ids=str,
)
def test_full_batch_elbo_never_decreases(prior):
    """In float64 (the estimator's float32 passes carry 1e-7 relative round-off), with merges,
    whitened factors and sorting all on."""
    X, _ = planted_factor_analysers(3, D=10, r=2, K=3, n=300)
    data = torch.tensor(X, dtype=torch.float64).unsqueeze(0)
    spec = ModelSpec(prior, empirical_base_measure(data, "lowrank", rank=2), 10)
    res = fit_natural(data, spec, options=NaturalOptions(progress=False, tol=1e-7))
    h = res.elbo_history[:, 0]
    assert len(h) > 3 and res.info["merges"] >= 1
    assert bool((h[1:] - h[:-1] >= -1e-9 * h.abs()[1:]).all()), torch.diff(h).min()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_planted_factor_analysers_from_a_large_truncation(seed):
    """From 12 components the fit reaches what a fit told the number of clusters reaches: the
    planted clusters exactly and the same held-out log-likelihood, converged (without merges scored
    in the kept component's coordinates and whitened factors it crawled for hundreds of iterations
    to a lower bound)."""
    X, y = planted_factor_analysers(seed)
    with pytest.warns(TruncationWarning):  # told the number of clusters: every component is used
        told = DPGMM(truncation=3, covariance="lowrank", rank=2, seed=seed).fit(X)
    model = DPGMM(truncation=12, covariance="lowrank", rank=2, seed=seed, max_iter=150).fit(X)
    assert model.converged_
    assert model.n_active_ == 3
    assert adjusted_rand_score(y, model.predict(X)) >= 0.99
    assert model.score(X) >= told.score(X) - 0.01


def test_lowrank_fits_correlated_clusters_better_than_diagonal():
    points, _ = planted_factor_analysers(5, n=1600)  # rows come shuffled: two halves of one draw
    X, X_test = points[:2400], points[2400:]
    low = DPGMM(truncation=10, covariance="lowrank", rank=2).fit(X)
    with pytest.warns(TruncationWarning):  # axis-aligned components cannot follow the factors: all used
        diag = DPGMM(truncation=10, covariance="diag").fit(X)
    assert low.score(X_test) > diag.score(X_test) + 1.0


def test_predictive_density_is_the_plug_in_factor_analyser():
    data, params, _, _ = _pass_setup(WeightPrior("dp", 1.0))
    x = data[:, :50]
    got = lowrank_log_predictive(params, x)  # (B, n, K)
    cov = lowrank_covariances(params)  # (B, K, D, D)
    dense = torch.distributions.MultivariateNormal(
        params.mean.unsqueeze(1), covariance_matrix=cov.unsqueeze(1)
    )
    want = dense.log_prob(x.unsqueeze(2))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-8)


def test_checkpoint_of_another_rank_is_refused(tmp_path):
    from dpmodels.infer import FitCheckpointError

    X, _ = planted_factor_analysers(0, D=8, n=200)
    path = tmp_path / "fit.ckpt"
    DPGMM(truncation=6, covariance="lowrank", rank=2, checkpoint=path, keep_checkpoint=True).fit(X)
    again = DPGMM(truncation=6, covariance="lowrank", rank=2, checkpoint=path, keep_checkpoint=True).fit(X)
    with pytest.raises(FitCheckpointError):
        DPGMM(truncation=6, covariance="lowrank", rank=3, checkpoint=path).fit(X)
    assert path.exists() and again.n_active_ >= 1


@pytest.mark.parametrize("rank", [0, -1, 8, 9, 2.5, True])
def test_bad_rank_is_one_clear_error_before_any_work(rank):
    X, _ = planted_factor_analysers(0, D=8, n=50)
    with pytest.raises(ValueError, match="rank"):
        DPGMM(covariance="lowrank", rank=rank).fit(X)


def test_lowrank_needs_the_natural_engine():
    with pytest.raises(ValueError, match="engine='natural'"):
        DPGMM(covariance="lowrank", engine="pyro").validate()


def test_a_cluster_split_in_two_is_merged_back_at_the_first_merge_check():
    """Two components fitted to the halves of one factor-analyser cluster: merging them scores
    above keeping both when the absorbed half's factors are re-expressed in the kept component's
    coordinates (and higher than adding its statistics as they are, in unrelated coordinates)."""
    X, y = planted_factor_analysers(7, K=1, n=1500)
    data = torch.tensor(X, dtype=torch.float64).unsqueeze(0)
    prior = WeightPrior("dp", 1.0)
    spec = ModelSpec(prior, empirical_base_measure(data, "lowrank", rank=2), 2)
    params, base, shift = initial_params(data, spec, torch.Generator().manual_seed(0), 1500, "cpu")
    x = data - shift.unsqueeze(1)
    for _ in range(5):  # settle the two halves without merges
        stats, _ = e_step(params, x)
        params = m_step(best_factor_frame(stats, base)[0], base, prior, params)
    stats, _ = e_step(params, x)
    assert bool((stats.count > 300).all())  # really split
    current = elbo_from_stats(stats, m_step(stats, base, prior, params), base, prior)
    pairs = torch.tensor([[[0, 1]]])
    stats, comp, pair, moved = full_pass(
        data, shift, params, 10_000, torch.device("cpu"), torch.float64, pairs
    )
    in_kept_frame = _pair_candidate_elbos(stats, comp, pair, pairs, params, base, prior, moved)
    as_is = _pair_candidate_elbos(stats, comp, pair, pairs, params, base, prior)
    assert float(in_kept_frame) > float(current)
    assert float(in_kept_frame) > float(as_is)


def test_equal_components_are_evaluated_once_with_the_same_statistics():
    """Empty components all sit at the prior: the plan evaluates them once and shares the group's
    statistics in proportion to exp(E[log pi_k]); the result equals evaluating every component."""
    data, params, _, shift = _pass_setup(WeightPrior("pitman_yor", 1.0, 0.3))
    for t in params.tensors().values():
        if t.dim() >= 2 and t.shape[1] == 10:  # components 6..9 equal (as at the prior)
            t[:, 6:9] = t[:, 9:10]
    plan = lowrank_plan(params)
    assert len(plan.unique) == 7 and plan.index[0, 6:].tolist() == [6, 6, 6, 6]
    x = data - shift.unsqueeze(1)
    e_log_pi = expected_log_weights(params)
    loglik, ey = plan.factors_distinct(x)
    r = torch.softmax(e_log_pi.unsqueeze(1) + plan.expand(loglik, 2), -1)
    grouped = factor_statistics(plan, x, r, ey, e_log_pi)
    direct = factor_statistics(plan, x, r, plan.expand(ey, 1))
    for a, b in zip(grouped, direct, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_scaled_factors_are_an_exact_transformation_and_the_frame_never_lowers_the_bound():
    data, params, base, shift = _pass_setup(WeightPrior("dp", 1.0), seed=2)
    x = data - shift.unsqueeze(1)
    stats, _ = e_step(params, x)
    a = torch.full_like(stats.count, 1.1)
    s1, s2, gain = scale_factor_stats(stats.count, stats.s1, stats.s2, a)
    sxy, _, syy = unpack_stats(stats.s1, stats.s2)
    w_sxy, _, w_syy = unpack_stats(s1, s2)
    torch.testing.assert_close(w_sxy[..., :-1], 1.1 * sxy[..., :-1])
    torch.testing.assert_close(w_syy[..., :-1, :-1], 1.21 * syy[..., :-1, :-1])
    torch.testing.assert_close(gain, stats.count * 2 * torch.log(torch.tensor(1.1, dtype=torch.float64)))
    raw_terms = component_elbo_terms(stats, component_update(stats, base), base)
    framed, terms = best_factor_frame(stats, base)
    assert bool((terms >= raw_terms - 1e-9 * raw_terms.abs()).all())
    prior = WeightPrior("dp", 1.0)
    before = elbo_from_stats(stats, m_step(stats, base, prior, params), base, prior)
    after = elbo_from_stats(framed, m_step(framed, base, prior, params), base, prior)
    assert bool((after >= before - 1e-9 * before.abs()).all())
