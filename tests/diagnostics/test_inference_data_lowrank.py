"""InferenceData of low-rank (factor-analyser) fits: variables, dims, alignment of chains, the
log-likelihood against dense Gaussians, the size estimate, ArviZ summaries and storage; and the
diagnostics that refuse low-rank fits with a clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from dpmodels import DPGMM
from dpmodels.diagnostics import (
    gibbs_like,
    gibbs_sample,
    load_inference_data,
    loo,
    save_inference_data,
    sbc_ranks,
    summarize,
    to_inference_data,
    vi_pareto_k,
)
from dpmodels.diagnostics._arviz import az
from dpmodels.diagnostics.inference_data import estimate_bytes
from dpmodels.priors import WeightPrior
from tests.conftest import correlated_clusters

D, RANK, K = 8, 2, 8


@pytest.fixture(scope="module")
def fitted():
    X = correlated_clusters(150, 0, D, RANK)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small fits: far faster on one thread than on two busy ones
    try:
        fits = [DPGMM(covariance="lowrank", rank=RANK, truncation=K, seed=s).fit(X) for s in range(2)]
    finally:
        torch.set_num_threads(threads)
    return X, fits


@pytest.fixture(scope="module")
def idata(fitted):
    X, fits = fitted
    return to_inference_data(fits, X, num_draws=12, posterior_predictive=True)


def test_lowrank_variables_dims_and_attrs(fitted, idata):
    X, fits = fitted
    post = idata.posterior
    assert post["loadings"].dims == ("chain", "draw", "component", "feature", "factor")
    assert post["loadings"].shape == (2, 12, K, D, RANK)
    for name in ("noise_variances", "variances", "means"):
        assert post[name].dims == ("chain", "draw", "component", "feature")
        assert post[name].shape == (2, 12, K, D)
    assert "covariances" not in post.data_vars
    assert post["weights"].shape == (2, 12, K)
    assert (post["noise_variances"] > 0).all()
    marginal = post["noise_variances"] + (post["loadings"] ** 2).sum("factor")  # diag(W W^T) + noise
    np.testing.assert_allclose(post["variances"], marginal, rtol=1e-12)
    assert post.attrs["covariance"] == "lowrank" and post.attrs["rank"] == RANK
    assert post.attrs["loading_precision"] == fits[0].posterior_.spec.base.loading_precision > 0
    assert idata.log_likelihood["x"].shape == (2, 12, X.shape[0])
    assert idata.posterior_predictive["x"].shape == (2, 12) + X.shape


def test_chains_are_aligned_on_rotation_invariant_quantities(idata):
    post = idata.posterior
    top = post["weights"].mean(("chain", "draw")).values.argsort()[::-1][:3]  # the planted clusters
    means = post["means"].mean("draw").values[:, top]  # (chain, 3, D)
    np.testing.assert_allclose(means[0], means[1], atol=0.2)
    var = post["variances"].mean("draw").values[:, top]  # the same clusters have the same spread
    np.testing.assert_allclose(var[0], var[1], rtol=0.25)


def test_log_likelihood_matches_dense_gaussians_of_the_draws(fitted, idata):
    X, _ = fitted
    post = idata.posterior
    x = X.astype(np.float64)
    for c, s in ((0, 0), (1, 7)):
        w = post["loadings"].values[c, s]  # (K, D, r)
        cov = w @ w.transpose(0, 2, 1) + np.stack([np.diag(v) for v in post["noise_variances"].values[c, s]])
        comp = np.stack(
            [multivariate_normal(post["means"].values[c, s, k], cov[k]).logpdf(x) for k in range(K)], -1
        )
        ref = logsumexp(np.log(post["weights"].values[c, s]) + comp, axis=-1)
        np.testing.assert_allclose(idata.log_likelihood["x"].values[c, s], ref, rtol=1e-9, atol=1e-8)


def test_predictive_draws_have_the_data_spread(fitted, idata):
    X, _ = fitted
    pred = idata.posterior_predictive["x"].values.reshape(-1, D)
    np.testing.assert_allclose(pred.std(0), X.std(0), rtol=0.2)


def test_summary_loo_and_storage(idata, tmp_path):
    table = summarize(idata)
    assert {"n_active", "weight_entropy"} <= {i.split("[")[0] for i in table.index}
    lr = az.summary(idata, var_names=["loadings", "noise_variances", "variances"], kind="stats")
    assert len(lr) == K * D * RANK + 2 * K * D and np.isfinite(lr["mean"]).all()
    result = loo(idata)
    assert np.isfinite(result.elpd_loo)
    back = load_inference_data(save_inference_data(idata, tmp_path / "lowrank.nc"))
    np.testing.assert_array_equal(back.posterior["loadings"].values, idata.posterior["loadings"].values)
    assert back.posterior["loadings"].dims[-1] == "factor" and back.posterior.attrs["rank"] == RANK


def test_size_estimate_counts_the_loadings(fitted, idata):
    X, fits = fitted
    n = X.shape[0]
    need = estimate_bytes(2, 12, K, D, n, "lowrank", True, RANK)
    held = sum(idata[g].nbytes for g in ("posterior", "log_likelihood", "posterior_predictive"))
    assert held <= need  # the estimate covers what the InferenceData holds
    assert estimate_bytes(1, 1, K, D, 0, "lowrank", False, 16) > estimate_bytes(
        1, 1, K, D, 0, "lowrank", False, 2
    )
    assert estimate_bytes(1, 1, K, D, 0, "lowrank", False, RANK) > estimate_bytes(
        1, 1, K, D, 0, "diag", False
    )
    with pytest.raises(ValueError, match="rank"):
        estimate_bytes(1, 1, K, D, 0, "lowrank", False)
    with pytest.raises(ValueError, match="MiB"):
        to_inference_data(fits, X, num_draws=12, posterior_predictive=True, max_bytes=need - 8)


def test_gibbs_psis_and_sbc_refuse_lowrank_with_a_clear_message(fitted):
    X, fits = fitted
    for call in (
        lambda: gibbs_like(fits[0], X),
        lambda: gibbs_sample(X, covariance="lowrank"),
        lambda: vi_pareto_k(fits[0], X, num_draws=20),
        lambda: sbc_ranks(WeightPrior("dp", 1.0), fits[0].posterior_.spec.base, 4, 20),
    ):
        with pytest.raises(ValueError, match="covariance='lowrank'.*to_inference_data"):
            call()
