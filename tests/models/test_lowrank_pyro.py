"""Low-rank components in the Pyro model and guide: the natural engine's closed-form ELBO equals
Pyro's ``TraceEnum_ELBO`` of the same model and guide, and the model's sites have the generative
story of :mod:`dpmodels.models.lowrank`."""

import math
import warnings

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, TraceEnum_ELBO

from dpmodels.infer import ConvergenceWarning, NaturalOptions, fit_natural
from dpmodels.infer.natural import centred_base
from dpmodels.infer.updates import e_step, elbo_from_stats
from dpmodels.models import MAX_PLATE_NESTING, ModelSpec, dpgmm_guide, dpgmm_model, empirical_base_measure
from dpmodels.models.lowrank import LOG_2PI, lowrank_plan
from tests.conftest import PRIORS
from tests.infer.elbo_check import closed_form_elbo

D, RANK, K = 4, 2, 4


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread is ten times faster than two busy ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def factor_data(seed: int, fits: int = 2, n: int = 50) -> torch.Tensor:
    """``fits`` independent data sets ``(fits, n, D)``, each two factor-analyser clusters of rank
    ``RANK`` (different loadings, means 6 apart, noise sd 0.3)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(fits):
        parts = []
        for shift, size in ((-3.0, n // 2), (3.0, n - n // 2)):
            w = torch.randn(D, RANK, generator=g, dtype=torch.float64)
            y = torch.randn(size, RANK, generator=g, dtype=torch.float64)
            parts.append(y @ w.T + shift + 0.3 * torch.randn(size, D, generator=g, dtype=torch.float64))
        out.append(torch.cat(parts))
    return torch.stack(out)


def lowrank_spec(data: torch.Tensor, prior_name: str) -> ModelSpec:
    return ModelSpec(PRIORS[prior_name], empirical_base_measure(data, "lowrank", rank=RANK), K)


def fitted(data: torch.Tensor, prior_name: str, seed: int, iters: int = 12):
    """A short natural-engine fit (the check holds at any parameters; near the optimum the Monte
    Carlo spread of Pyro's estimate is about 3 nats per particle here, twice that after 4 steps)."""
    spec = lowrank_spec(data, prior_name)
    opts = NaturalOptions(max_iter=iters, progress=False, merge=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_natural(data, spec, seed=seed, options=opts)
    return spec, res.params


def closed_form_and_factor_entropy(data, spec, params):
    """The closed-form ELBO (total nats, ``(B,)``) after a fresh E-step, and the part of it that is
    the factors' entropy ``sum_nk r_nk H[q(y_n | z_n = k)]`` ``(B,)``."""
    base_c, shift = centred_base(spec)
    centred = params.map(lambda t: t.double())
    centred.mean = centred.mean - shift.unsqueeze(1)
    stats, _ = e_step(centred, data.double() - shift.unsqueeze(1))
    elbo = elbo_from_stats(stats, centred, base_c, spec.prior)
    h_y = 0.5 * RANK * (1.0 + LOG_2PI) - 0.5 * lowrank_plan(centred).log_det_p  # (B, K)
    return elbo, (stats.count * h_y).sum(-1)


def trace_enum_elbo(data, spec, params, batches: int, particles: int) -> np.ndarray:
    """``batches`` estimates of the total ELBO (summed over fits), each the mean of ``particles``
    vectorised ``TraceEnum_ELBO`` particles (``z`` enumerated in the guide, everything else drawn)."""
    elbo = TraceEnum_ELBO(
        max_plate_nesting=MAX_PLATE_NESTING, num_particles=particles, vectorize_particles=True
    )
    model = lambda d: dpgmm_model(d, spec)  # noqa: E731
    guide = lambda d: dpgmm_guide(d, spec, params)  # noqa: E731
    with warnings.catch_warnings():
        # Pyro notes that the enumerated z is shared between model and guide; that is the design.
        warnings.simplefilter("ignore", UserWarning)
        return np.array([-elbo.loss(model, guide, data) for _ in range(batches)])


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("prior_name", ["dp", "finite"])
def test_lowrank_closed_form_elbo_equals_trace_enum_elbo(prior_name, seed):
    """Two fits batched, rank 2: closed form within 3.5 Monte-Carlo SE of Pyro's estimate (4000
    particles); the tolerance is below half a nat, far below the factors' entropy (which the check
    must see)."""
    pyro.set_rng_seed(seed)
    data = factor_data(seed)
    spec, params = fitted(data, prior_name, seed)
    closed, h_factors = closed_form_and_factor_entropy(data, spec, params)
    assert torch.allclose(closed, closed_form_elbo(data, spec, params), rtol=0, atol=1e-8)
    closed, h_factors = float(closed.sum()), float(h_factors.sum())
    draws = trace_enum_elbo(data, spec, params, batches=40, particles=100)
    se = draws.std(ddof=1) / math.sqrt(len(draws))
    tol = 3.5 * se
    print(f"{prior_name} seed {seed}: closed {closed:.3f}, TraceEnum {draws.mean():.3f} +- {se:.3f}")
    assert abs(draws.mean() - closed) < tol, (closed, draws.mean(), se)
    # the check's power: it resolves half a nat, and a closed form without the factors' entropy fails
    assert tol < 0.5, se
    assert abs(draws.mean() - (closed - h_factors)) > 10 * tol, (h_factors, se)


@pytest.mark.parametrize("prior_name", ["dp", "finite"])
def test_lowrank_prior_predictive_shapes(prior_name):
    data = factor_data(0).float()
    spec = lowrank_spec(data, prior_name)
    draws = Predictive(dpgmm_model, num_samples=7)(None, spec, num_points=25)
    assert draws["x"].shape == (7, 2, 25, D)
    assert draws["z"].shape == (7, 2, 25)
    assert draws["factors"].shape == (7, 2, 25, RANK)
    assert draws["precision"].shape == (7, 2, K, D)
    assert draws["loadings"].shape == (7, 2, K, D, RANK + 1)
    assert "mean" not in draws
    assert int(draws["z"].max()) < K
    assert all(bool(torch.isfinite(v).all()) for v in draws.values())


def _globals(base, seed=3):
    """Fixed component sites ``precision (B, K, D)`` and rows ``loadings (B, K, D, r+1)``."""
    g = torch.Generator().manual_seed(seed)
    B = base.mean.shape[0]
    lam = torch.rand(B, K, D, generator=g, dtype=torch.float64) + 0.5
    rows = torch.randn(B, K, D, RANK + 1, generator=g, dtype=torch.float64)
    return lam, rows


def test_lowrank_site_log_probs_follow_the_generative_story():
    """Given all latent sites, the model's log densities are those of the module docstring: Gamma
    noise precisions, rows ``N((0, m0_d), (lambda_kd A0)^-1)``, ``N(0, I)`` factors and
    ``x_n ~ N(W_z y_n + mu_z, diag(lambda_z)^-1)``, each component picked by its own ``z``."""
    data = factor_data(0)
    spec = lowrank_spec(data, "finite")
    base = spec.base
    B, N = data.shape[:2]
    lam, rows = _globals(base)
    z = torch.arange(N).remainder(K).expand(B, N)
    y = torch.randn(B, N, RANK, dtype=torch.float64)
    cond = {"precision": lam, "loadings": rows, "z": z, "factors": y}
    trace = poutine.trace(poutine.condition(dpgmm_model, data=cond)).get_trace(data, spec)
    trace.compute_log_prob()
    x_site = trace.nodes["x"]
    assert x_site["value"].shape == (B, N, D)
    assert x_site["fn"].event_shape == (D,)
    w, mu = rows[..., :RANK], rows[..., RANK]
    b_idx = torch.arange(B)[:, None]
    loc = (w[b_idx, z] @ y.unsqueeze(-1)).squeeze(-1) + mu[b_idx, z]  # (B, N, D)
    lam_z = lam[b_idx, z]
    expected = (0.5 * torch.log(lam_z) - 0.5 * LOG_2PI - 0.5 * lam_z * (data - loc).pow(2)).sum(-1)
    torch.testing.assert_close(x_site["log_prob"], expected)
    # the factors' prior and the rows' prior
    torch.testing.assert_close(trace.nodes["factors"]["log_prob"], -0.5 * (y.pow(2).sum(-1) + RANK * LOG_2PI))
    a0 = torch.tensor([base.loading_precision] * RANK + [1.0], dtype=torch.float64)
    a0 = a0 * torch.cat(
        [torch.ones(B, RANK, dtype=torch.float64), base.mean_precision[:, None]], -1
    )  # (B, q)
    prior_loc = torch.cat([torch.zeros(B, D, RANK, dtype=torch.float64), base.mean.unsqueeze(-1)], -1)
    dev = rows - prior_loc.unsqueeze(1)  # (B, K, D, q)
    prec = lam.unsqueeze(-1) * a0[:, None, None]  # diagonal of lambda_kd A0  (B, K, D, q)
    rows_lp = (0.5 * torch.log(prec) - 0.5 * LOG_2PI - 0.5 * prec * dev.pow(2)).sum((-1, -2))
    torch.testing.assert_close(trace.nodes["loadings"]["log_prob"], rows_lp)
    gamma = torch.distributions.Gamma(0.5 * base.dof[:, None, None], 0.5 * base.scale[:, None])
    torch.testing.assert_close(trace.nodes["precision"]["log_prob"], gamma.log_prob(lam).sum(-1))


def test_lowrank_prior_predictive_is_a_factor_analyser():
    """With the globals fixed and every point in component ``k``, draws of ``x`` (factors drawn
    too) have mean ``mu_k`` and covariance ``W_k W_k^T + diag(1 / lambda_k)``."""
    data = factor_data(0, fits=1)
    spec = lowrank_spec(data, "finite")
    lam, rows = _globals(spec.base)
    k, n = 2, 20_000
    cond = {"precision": lam, "loadings": rows, "z": torch.full((1, n), k)}
    trace = poutine.trace(poutine.condition(dpgmm_model, data=cond)).get_trace(None, spec, num_points=n)
    x = trace.nodes["x"]["value"][0]  # (n, D)
    w, mu = rows[0, k, :, :RANK], rows[0, k, :, RANK]
    cov = w @ w.T + torch.diag(1.0 / lam[0, k])
    torch.testing.assert_close(
        x.mean(0), mu, atol=5 * float(cov.diagonal().max().sqrt()) / math.sqrt(n), rtol=0
    )
    torch.testing.assert_close(torch.cov(x.T), cov, atol=0.08 * float(cov.diagonal().max()), rtol=0)


def test_lowrank_guide_sites_and_minibatch():
    """The guide draws the model's sites, enumerates ``z`` and indexes ``q(y | z)`` by it; with
    ``subsample_size`` the loss is finite and ``factors`` covers the minibatch only."""
    data = factor_data(1)
    spec, params = fitted(data, "dp", 0, iters=2)
    guide_trace = poutine.trace(lambda d: dpgmm_guide(d, spec, params)).get_trace(data)
    assert guide_trace.nodes["z"]["infer"]["enumerate"] == "parallel"
    assert guide_trace.nodes["loadings"]["value"].shape == (2, K, D, RANK + 1)
    assert guide_trace.nodes["factors"]["value"].shape == (2, data.shape[1], RANK)
    enum_trace = poutine.trace(
        poutine.enum(lambda d: dpgmm_guide(d, spec, params), first_available_dim=-MAX_PLATE_NESTING - 1)
    ).get_trace(data)
    assert enum_trace.nodes["factors"]["value"].shape == (K, 2, data.shape[1], RANK)
    # the factors' mean for the enumerated component k is P_k^-1 h_nk
    _, ey = lowrank_plan(params).factors(data)  # (B, K, r, N)
    torch.testing.assert_close(enum_trace.nodes["factors"]["fn"].mean, ey.permute(1, 0, 3, 2))
    elbo = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        loss = elbo.loss(
            lambda d: dpgmm_model(d, spec, subsample_size=10),
            lambda d: dpgmm_guide(d, spec, params, subsample_size=10),
            data,
        )
    assert math.isfinite(loss)
    sub = poutine.trace(lambda d: dpgmm_guide(d, spec, params, subsample_size=10)).get_trace(data)
    assert sub.nodes["factors"]["value"].shape == (2, 10, RANK)
