"""The diagonal E-step as matrix products (dpmodels.models.diagonal) against the (n, K, D) broadcast formula."""

from __future__ import annotations

import math

import pytest
import torch

from dpmodels.infer.result import full_pass
from dpmodels.infer.updates import STATS_BLOCK, diag_e_step, e_step
from dpmodels.models import VariationalParams
from dpmodels.models.diagonal import PAD_COLUMNS, diag_plan
from dpmodels.models.family import expected_log_weights


def _params(D: int, K: int = 7, B: int = 2, offset: float = 0.0) -> VariationalParams:
    """Diagonal components around ``offset``: the last two equal (as empty components at the prior are)."""
    g = torch.Generator().manual_seed(D)
    f64 = dict(generator=g, dtype=torch.float64)
    mean = offset + 2.0 * torch.randn(B, K, D, **f64)
    dof = D + 50 * torch.rand(B, K, **f64)
    scale = dof.unsqueeze(-1) * (0.3 + torch.rand(B, K, D, **f64))  # covariances about 0.3-1.3
    beta = 1.0 + 20 * torch.rand(B, K, **f64)
    for t in (mean, scale, beta, dof):
        t[:, -1] = t[:, -2]
    stick_a, stick_b = 1.0 + 5 * torch.rand(B, K - 1, **f64), 1.0 + torch.rand(B, K - 1, **f64)
    return VariationalParams("diag", mean, beta, dof, scale=scale, stick_a=stick_a, stick_b=stick_b)


def _points(params: VariationalParams, n: int) -> torch.Tensor:
    """Points drawn near the components' means (each fit its own)."""
    g = torch.Generator().manual_seed(n)
    B, K, D = params.mean.shape
    pick = torch.randint(K, (B, n), generator=g)
    centre = torch.gather(params.mean, 1, pick.unsqueeze(-1).expand(B, n, D))
    return centre + 0.8 * torch.randn(B, n, D, generator=g, dtype=torch.float64)


def _reference(params: VariationalParams, x: torch.Tensor):
    """log r and the statistics from the broadcast formula, everything in float64."""
    D = params.num_features
    diff = x.unsqueeze(2) - params.mean.unsqueeze(1)  # (B, n, K, D)
    maha = (diff.pow(2) / params.scale.unsqueeze(1)).sum(-1)  # (B, n, K)
    e_log_det = D * torch.digamma(0.5 * params.dof) - torch.log(0.5 * params.scale).sum(-1)
    const = 0.5 * e_log_det - 0.5 * D * math.log(2 * math.pi) - 0.5 * D / params.mean_precision
    logits = (
        expected_log_weights(params).unsqueeze(1) + const.unsqueeze(1) - 0.5 * params.dof.unsqueeze(1) * maha
    )
    log_r = torch.log_softmax(logits, -1)
    r = log_r.exp()
    r_t = r.transpose(1, 2)
    xlogx = torch.where(r > 0, r * log_r, torch.zeros_like(r))
    stats = {"count": r.sum(1), "s1": r_t @ x, "s2": r_t @ x.pow(2), "entropy": -xlogx.sum((1, 2))}
    return log_r, stats, r


TOL = {torch.float64: dict(rtol=1e-9, atol=1e-7), torch.float32: dict(rtol=2e-4, atol=2e-2)}


@pytest.mark.parametrize("offset", [0.0, 300.0], ids=["centred", "far-from-zero"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_diag_e_step_matches_the_broadcast_formula(dtype, offset):
    params = _params(40, offset=offset)
    x = _points(params, STATS_BLOCK + 452)  # a full block of points and a partial one
    x_in = x.to(dtype)
    ref_log_r, ref, _ = _reference(params, x_in.double())
    stats, log_r = e_step(params.map(lambda t: t.to(dtype)), x_in)
    assert log_r.dtype == dtype and stats.s2.dtype == torch.float64
    # the responsibilities' logits are ~1e3 nats apart: compare where they matter
    live = ref_log_r > -30
    torch.testing.assert_close(log_r.double()[live], ref_log_r[live], **TOL[dtype])
    for name, want in ref.items():
        torch.testing.assert_close(
            getattr(stats, name), want, **TOL[dtype], msg=lambda m, n=name: f"{n}: {m}"
        )


def test_distinct_components_are_evaluated_once_and_padded():
    params = _params(12, K=7)
    plan = diag_plan(params, torch.float64)
    assert plan.U == 6 and plan.weights.shape[-1] == PAD_COLUMNS  # the equal pair once; 6 -> 16 columns
    full = diag_plan(params, torch.float64, dedupe=False)
    x = _points(params, 300)
    torch.testing.assert_close(plan.log_likelihood(plan.features(x)), full.log_likelihood(full.features(x)))


def test_merge_terms_match_the_responsibilities():
    params = _params(24)
    x = _points(params, 900)
    _, _, r = _reference(params, x)
    K = params.truncation
    pairs = torch.tensor([[j, k] for j in range(K) for k in range(K) if j != k]).expand(2, -1, -1)
    plan = diag_plan(params, torch.float64)
    _, _, comp, pair = diag_e_step(plan, x, expected_log_weights(params), pairs)

    def xlogx(t):
        return torch.where(t > 0, t * torch.log(t), torch.zeros_like(t)).sum(1)

    both = torch.gather(r, 2, pairs[..., 0].unsqueeze(1).expand(2, x.shape[1], -1)) + torch.gather(
        r, 2, pairs[..., 1].unsqueeze(1).expand(2, x.shape[1], -1)
    )
    torch.testing.assert_close(comp, xlogx(r), rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(pair, xlogx(both), rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_full_pass_subtracts_the_shift_inside_the_plan(dtype):
    """A pass hands the diagonal plan uncentred points (one subtraction): same statistics as centring first."""
    params = _params(16)
    shift = 5.0 + torch.randn(2, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = _points(params, 1500)
    data = (x + shift.unsqueeze(1)).to(dtype)
    total = full_pass(data, shift, params, 512, torch.device("cpu"), dtype)
    want = e_step(params, (data.double() - shift.unsqueeze(1)))[0]
    for name in ("count", "s1", "s2", "entropy"):
        torch.testing.assert_close(getattr(total, name), getattr(want, name), **TOL[dtype])
