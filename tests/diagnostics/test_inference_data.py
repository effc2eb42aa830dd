"""InferenceData built from variational fits: layout, alignment, log-likelihood, storage, errors."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from dpmodels import DPGMM
from dpmodels._validation import NotFittedError
from dpmodels.data import PlantedMixture
from dpmodels.diagnostics import (
    FORMAT_VERSION,
    explain_loo,
    load_inference_data,
    loo,
    save_inference_data,
    summarize,
    to_inference_data,
)
from dpmodels.diagnostics._arviz import az
from dpmodels.diagnostics.draws import match_components, permute_components


@pytest.fixture(scope="module", params=["full", "diag"])
def fitted(request):
    cov = request.param
    X, _ = PlantedMixture(3, 2, covariance=cov, seed=0).sample(240, seed=1)
    fits = [DPGMM(truncation=8, covariance=cov, seed=s).fit(X) for s in range(3)]
    return X, fits, cov


def test_groups_dims_and_coords(fitted):
    X, fits, cov = fitted
    idata = to_inference_data(fits, X, num_draws=50, posterior_predictive=True)
    assert {"posterior", "log_likelihood", "observed_data", "posterior_predictive", "elbo"} <= set(
        idata.groups()
    )
    post = idata.posterior
    assert post["weights"].dims == ("chain", "draw", "component")
    assert post["weights"].shape == (3, 50, 8)
    cov_name = "covariances" if cov == "full" else "variances"
    expected = ("chain", "draw", "component", "feature") + (("feature_bis",) if cov == "full" else ())
    assert post[cov_name].dims == expected
    assert post["sorted_weights"].dims == ("chain", "draw", "rank")
    assert post["n_active"].dims == ("chain", "draw") and post["weight_entropy"].dims == ("chain", "draw")
    np.testing.assert_allclose(post["weights"].sum("component"), 1.0, rtol=1e-5)  # float32 fits
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "point")
    assert idata.observed_data["x"].shape == X.shape
    assert idata.posterior_predictive["x"].shape == (3, 50) + X.shape
    assert idata.elbo["elbo"].dims == ("chain", "iteration")
    assert idata.elbo["elbo"].shape[1] == max(len(f.elbo_history_) for f in fits)
    attrs = post.attrs
    assert attrs["prior"] == "dp" and attrs["truncation"] == 8 and attrs["covariance"] == cov
    assert attrs["dpmodels_format"] == FORMAT_VERSION and attrs["log_likelihood_data"] == "fitted"
    assert {"torch_version", "pyro_version", "arviz_version", "created_at", "engine"} <= set(attrs)
    # the sampled n_active agrees with the fitted one on well-separated clusters
    assert abs(float(post["n_active"].mean()) - fits[0].n_active_) < 0.2


def test_summary_and_loo_run_without_warnings(fitted):
    X, fits, _ = fitted
    idata = to_inference_data(fits, X, num_draws=100)
    table = az.summary(idata, var_names=["sorted_weights", "weight_entropy"])
    assert np.all(table["r_hat"] < 1.05)
    ours = summarize(idata, max_components=4)
    assert "weights[0]" in ours.index and "sorted_weights[3]" in ours.index
    result = az.loo(idata, pointwise=True)  # warnings are errors in this suite
    assert result.pareto_k.shape == (X.shape[0],)
    assert np.isfinite(result.elpd_loo)
    assert "nats per point" in explain_loo(loo(idata))


def test_log_likelihood_equals_scipy_mixture_density(fitted):
    X, fits, cov = fitted
    idata = to_inference_data(fits[:1], X, num_draws=5, max_points=40, seed=3)
    post = idata.posterior
    points = idata.observed_data["x"].values
    np.testing.assert_array_equal(points, X[idata.log_likelihood["point"].values])
    for s in (0, 4):
        w = post["weights"].values[0, s]
        mu = post["means"].values[0, s]
        dens = np.zeros(len(points))
        for k in range(len(w)):
            if cov == "full":
                dens += w[k] * multivariate_normal(mu[k], post["covariances"].values[0, s, k]).pdf(points)
            else:
                sd = np.sqrt(post["variances"].values[0, s, k])
                dens += w[k] * norm(mu[k], sd).pdf(points).prod(-1)
        np.testing.assert_allclose(
            idata.log_likelihood["x"].values[0, s], np.log(dens), rtol=1e-6
        )  # float32 draws


def test_alignment_recovers_a_permuted_chain(fitted):
    X, fits, _ = fitted
    swapped = copy.copy(fits[0])
    post = copy.copy(fits[0].posterior_)
    perm = np.random.default_rng(0).permutation(post.truncation)
    post.order = post.order[:, perm]  # same posterior, components relabelled
    swapped.posterior_ = post
    raw = to_inference_data([fits[0]], X, num_draws=200, seed=1).posterior["means"].values[0].mean(0)
    idata = to_inference_data([fits[0], swapped], X, num_draws=200)
    means = idata.posterior["means"].values.mean(1)  # (chains, K, D)
    top = np.argsort(-idata.posterior["weights"].values[0].mean(0))[:3]
    np.testing.assert_allclose(means[1, top], means[0, top], atol=0.3)
    assert np.abs(raw[perm][top] - means[0, top]).max() > 1.0  # without alignment they would differ


def test_match_components_inverts_a_permutation():
    rng = np.random.default_rng(2)
    means = rng.normal(size=(6, 3)) * 5
    weights = rng.dirichlet(np.ones(6))
    perm = rng.permutation(6)
    found = match_components(means, weights, means[perm], weights[perm], np.ones(3))
    np.testing.assert_array_equal(means[perm][found], means)
    stacked = permute_components(np.stack([means[perm]] * 2), np.stack([found] * 2), 1)
    np.testing.assert_array_equal(stacked[1], means)


def test_heldout_points_are_scored_and_subsampled(fitted):
    X, fits, _ = fitted
    held, _ = PlantedMixture(3, 2, covariance=fits[0].covariance, seed=0).sample(500, seed=9)
    idata = to_inference_data(fits, X, heldout=held, num_draws=10, max_points=100, seed=4)
    assert idata.log_likelihood.attrs["log_likelihood_data"] == "heldout"
    idx = idata.log_likelihood["point"].values
    assert len(idx) == 100 and len(np.unique(idx)) == 100
    np.testing.assert_array_equal(idata.observed_data["x"].values, held[idx])


def test_netcdf_round_trip(fitted, tmp_path):
    X, fits, _ = fitted
    idata = to_inference_data(fits, X, num_draws=20)
    path = save_inference_data(idata, tmp_path / "run.nc")
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # the temp file was moved
    for back in (load_inference_data(path), az.from_netcdf(path)):
        assert set(back.groups()) == set(idata.groups())
        np.testing.assert_array_equal(back.posterior["weights"].values, idata.posterior["weights"].values)
        np.testing.assert_array_equal(back.log_likelihood["x"].values, idata.log_likelihood["x"].values)
        assert back.posterior.attrs["prior"] == "dp"


def test_load_errors(fitted, tmp_path):
    X, fits, _ = fitted
    with pytest.raises(FileNotFoundError, match="no InferenceData file"):
        load_inference_data(tmp_path / "missing.nc")
    (tmp_path / "text.nc").write_text("not a netCDF file")
    with pytest.raises(ValueError, match="not a readable netCDF"):
        load_inference_data(tmp_path / "text.nc")
    old = to_inference_data(fits, X, num_draws=10)
    old.posterior.attrs["dpmodels_format"] = 0
    old.to_netcdf(str(tmp_path / "old.nc"), engine="h5netcdf")
    with pytest.raises(ValueError, match="dpmodels_format=0"):
        load_inference_data(tmp_path / "old.nc")
    foreign = az.from_dict(prior={"a": np.zeros((1, 10))})
    foreign.to_netcdf(str(tmp_path / "foreign.nc"), engine="h5netcdf")
    with pytest.raises(ValueError, match="lacks \\['posterior'\\]"):
        load_inference_data(tmp_path / "foreign.nc")


def test_input_errors(fitted):
    X, fits, cov = fitted
    with pytest.raises(NotFittedError, match="unfitted DPGMM"):
        to_inference_data([fits[0], DPGMM()], X)
    with pytest.raises(ValueError, match="MiB.*reduce num_draws or max_points"):
        to_inference_data(fits, X, num_draws=100, max_bytes=10_000)
    other = DPGMM(truncation=5, covariance=cov).fit(X)
    with pytest.raises(ValueError, match="differs from chain 0 in .*truncation"):
        to_inference_data([fits[0], other], X)
    shifted = DPGMM(truncation=8, covariance=cov, seed=5).fit(X + 1.0)
    with pytest.raises(ValueError, match="different data"):
        to_inference_data([fits[0], shifted], X)
    with pytest.raises(ValueError, match="does not match the data"):
        to_inference_data(fits, X + 1.0)
    with pytest.raises(ValueError, match="posterior_predictive=True needs X"):
        to_inference_data(fits, posterior_predictive=True)
    with pytest.raises(TypeError, match="fitted DPGMM or a MixturePosterior"):
        to_inference_data([X])
