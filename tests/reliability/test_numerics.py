"""Numerical robustness: whatever the data's shape, scale or degeneracy, every fitted quantity is
finite, and degenerate data (constant or duplicated channels, D >= N) get a DegenerateDataWarning
while healthy data get none."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpmodels import DPGMM
from dpmodels.infer import ConvergenceWarning, DegenerateDataWarning, degenerate_report

PRIORS = {"dp": {}, "pitman_yor": {"discount": 0.3}, "finite": {}}


def _blobs(rng: np.random.Generator, n: int, d: int, k: int = 3) -> np.ndarray:
    centres = 4.0 * rng.normal(size=(k, d))
    return centres[rng.integers(k, size=n)] + rng.normal(size=(n, d))


def _fit_everything_finite(x: np.ndarray, **kwargs) -> tuple[DPGMM, list]:
    """Fit, then check every parameter, the ELBO (final and history), responsibilities and the
    predictive density for NaN/Inf. Returns the model and the warnings raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = DPGMM(**kwargs).fit(x)
    r = model.fit_result_
    xt = torch.as_tensor(x, dtype=torch.float32)
    checks = {name: t for name, t in r.params.tensors().items()}
    checks.update(
        elbo=r.elbo,
        elbo_history=r.elbo_history,
        resp=torch.as_tensor(model.predict_proba(xt)),
        log_predictive=torch.as_tensor(model.score_samples(xt)),
        covariances=torch.as_tensor(model.covariances_),
        weights=torch.as_tensor(model.weights_),
    )
    for name, t in checks.items():
        assert bool(torch.isfinite(t).all()), f"{name} has NaN/Inf for {kwargs}"
    resp = checks["resp"]
    assert torch.allclose(resp.sum(-1), torch.ones(len(x)), atol=1e-4)
    assert abs(float(checks["weights"].sum()) - 1.0) < 1e-4
    return model, [w for w in caught if not issubclass(w.category, ConvergenceWarning)]


def _degenerate(caught: list) -> bool:
    return any(issubclass(w.category, DegenerateDataWarning) for w in caught)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    n=st.integers(40, 250),
    d=st.integers(1, 6),
    log_scale=st.sampled_from([-4.0, 0.0, 4.0]),
    offset=st.sampled_from([0.0, 1e4]),
    prior=st.sampled_from(sorted(PRIORS)),
    covariance=st.sampled_from(["full", "diag"]),
    relu=st.booleans(),
)
def test_healthy_data_of_any_scale_fit_finite_without_warnings(
    seed, n, d, log_scale, offset, prior, covariance, relu
):
    rng = np.random.default_rng(seed)
    x = _blobs(rng, n, d)
    if relu:  # ReLU-sparse: most entries exactly zero, but no channel zero everywhere
        x = np.maximum(x - 1.5, 0.0)
        x[rng.integers(n, size=d), np.arange(d)] += 1.0 + rng.random(d)
    x = (x * 10.0**log_scale + offset).astype(np.float32)
    if degenerate_report(torch.from_numpy(x)[None], covariance):
        return  # e.g. float32 round-off made a scaled, offset channel constant: covered below
    model, caught = _fit_everything_finite(
        x, truncation=10, prior=prior, covariance=covariance, seed=seed, **PRIORS[prior]
    )
    assert not caught, [str(w.message) for w in caught]
    assert 1 <= model.n_active_ <= 10


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**16),
    kind=st.sampled_from(["constant", "duplicated", "dead_relu", "wide"]),
    prior=st.sampled_from(sorted(PRIORS)),
    covariance=st.sampled_from(["full", "diag"]),
)
def test_degenerate_data_fit_finite_and_warn(seed, kind, prior, covariance):
    rng = np.random.default_rng(seed)
    x = _blobs(rng, 300, 4)
    if kind == "constant":
        x[:, 1] = 2.5
    elif kind == "duplicated":
        x = np.concatenate([x, x[:, :2]], axis=1)
    elif kind == "dead_relu":
        x = np.concatenate([np.maximum(x, 0.0), np.zeros((300, 2))], axis=1)
    else:  # D > N
        x = rng.normal(size=(12, 20))
    _, caught = _fit_everything_finite(
        x.astype(np.float32), truncation=8, prior=prior, covariance=covariance, seed=seed, **PRIORS[prior]
    )
    # duplicated channels and D > N make a *full* covariance singular; a diagonal one does not mind
    expect = kind in ("constant", "dead_relu") or covariance == "full"
    assert _degenerate(caught) == expect, [str(w.message) for w in caught]


@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_fewer_points_than_truncation(prior):
    x = _blobs(np.random.default_rng(1), 12, 2).astype(np.float32)
    model, caught = _fit_everything_finite(x, truncation=30, prior=prior, **PRIORS[prior])
    assert not caught and model.n_active_ <= 12


def test_degenerate_report_names_the_problem():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(_blobs(rng, 200, 3))
    assert degenerate_report(x[None]) == []
    const = x.clone()
    const[:, 2] = 7.0
    assert "1 of 3 channels are constant (first: [2])" in degenerate_report(const[None])[0]
    dup = torch.cat([x, 2 * x[:, :1] - 3], 1)
    assert "linearly dependent" in degenerate_report(dup[None], "full")[0]
    assert degenerate_report(dup[None], "diag") == []
    wide = torch.randn(2, 5, 8, dtype=torch.float64)
    report = degenerate_report(wide, "full")
    assert len(report) == 2 and report[1].startswith("data set 1: N=5 points <= D=8")


@pytest.mark.slow
def test_float32_full_covariance_in_256_dimensions():
    rng = np.random.default_rng(0)
    loadings = rng.normal(size=(16, 256))
    x = rng.normal(size=(1000, 16)) @ loadings + 0.3 * rng.normal(size=(1000, 256))
    x = np.maximum(x + np.repeat(3.0 * rng.normal(size=(4, 256)), 250, 0), 0.0).astype(np.float32)
    model, caught = _fit_everything_finite(x, truncation=8, covariance="full", max_iter=4)  # ~35 s here
    assert not caught
