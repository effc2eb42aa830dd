"""The DPGMM estimator: recovery of planted clusters, agreement with scikit-learn, predictive
density, and clear errors for bad input."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import BayesianGaussianMixture

from dpmodels import DPGMM, ConvergenceWarning
from dpmodels._validation import NotFittedError
from dpmodels.data import PlantedMixture

CASES = [(K, D, seed) for D in (2, 8, 32) for K, seed in ((2, 0), (4, 1), (8, 2))]


@pytest.mark.parametrize("cov", ["full", "diag"])
@pytest.mark.parametrize("K, D, seed", CASES)
def test_recovers_planted_clusters(K, D, seed, cov):
    X, labels = PlantedMixture(K, D, cov, seed=seed).sample(1500 if D < 32 else 5000)
    model = DPGMM(truncation=20, covariance=cov, seed=seed).fit(X)
    assert abs(model.n_active_ - K) <= 1
    assert adjusted_rand_score(labels, model.predict(X)) >= 0.95


@pytest.mark.parametrize(
    "prior, kwargs",
    [
        ("dp", {}),
        ("pitman_yor", {"discount": 0.3}),
        ("finite", {}),
        ("dp", {"learn_concentration": True}),
        ("beta_sticks", {"prior_settings": {"a": 0.5}}),
    ],
)
@pytest.mark.parametrize("cov", ["full", "diag"])
def test_every_prior_and_covariance_fits(prior, kwargs, cov):
    X, labels = PlantedMixture(4, 3, cov, seed=6).sample(1200)
    model = DPGMM(truncation=15, prior=prior, covariance=cov, **kwargs).fit(X)
    assert model.n_active_ == 4
    assert adjusted_rand_score(labels, model.predict(X)) > 0.98
    assert model.converged_
    proba = model.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1.0, atol=1e-5)
    assert np.all(np.diff(model.weights_) <= 1e-7)  # canonical order: largest weight first


@pytest.mark.parametrize("K, D, seed", [(3, 2, 0), (5, 8, 1), (4, 8, 2)])
@pytest.mark.parametrize("cov", ["full", "diag"])
def test_agrees_with_scikit_learn(K, D, seed, cov):
    mix = PlantedMixture(K, D, cov, seed=seed)
    X, _ = mix.sample(4000)
    X_test, _ = mix.sample(2000, seed=1000 + seed)
    ours = DPGMM(truncation=20, covariance=cov, seed=seed).fit(X)
    sk = BayesianGaussianMixture(
        n_components=20, covariance_type=cov, weight_concentration_prior=1.0, max_iter=1000, random_state=seed
    ).fit(X)
    assert adjusted_rand_score(sk.predict(X), ours.predict(X)) >= 0.95
    # ours: Student-t posterior predictive; scikit-learn: plug-in Gaussian mixture
    assert abs(ours.score(X_test) - sk.score(X_test)) <= 0.05


def test_shifting_data_shifts_means():
    X, _ = PlantedMixture(3, 4, "full", seed=8).sample(1000)
    shift = np.array([100.0, -50.0, 3.0, 0.5])
    a = DPGMM(truncation=10).fit(X)
    b = DPGMM(truncation=10).fit(X + shift)
    np.testing.assert_allclose(b.means_[: a.n_active_], a.means_[: a.n_active_] + shift, atol=1e-2)
    np.testing.assert_allclose(b.weights_, a.weights_, atol=1e-4)


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_predictive_density_integrates_to_one_1d(cov):
    X, _ = PlantedMixture(3, 1, cov, seed=9).sample(300)
    model = DPGMM(truncation=8, covariance=cov).fit(X)
    grid = np.linspace(X.min() - 40, X.max() + 40, 40_001)[:, None]
    mass = np.trapezoid(np.exp(model.score_samples(grid)), grid[:, 0])
    assert mass == pytest.approx(1.0, abs=5e-3)


@pytest.mark.parametrize("cov", ["full", "diag"])
def test_predictive_density_integrates_to_one_2d(cov):
    X, _ = PlantedMixture(2, 2, cov, seed=10).sample(300)
    model = DPGMM(truncation=8, covariance=cov).fit(X)
    lo, hi = X.min(0) - 25, X.max(0) + 25
    gx, gy = np.linspace(lo[0], hi[0], 801), np.linspace(lo[1], hi[1], 801)
    pts = np.stack(np.meshgrid(gx, gy, indexing="ij"), -1).reshape(-1, 2)
    dens = np.exp(model.score_samples(pts)).reshape(801, 801)
    mass = np.trapezoid(np.trapezoid(dens, gy, axis=1), gx)
    assert mass == pytest.approx(1.0, abs=1e-2)


@pytest.mark.slow  # Pyro SVI to convergence, ~40 s
def test_pyro_engine_recovers_clusters_and_approaches_natural_elbo():
    X, labels = PlantedMixture(3, 2, "full", seed=11).sample(300)
    natural = DPGMM(truncation=5).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a short run of the slow reference path
        pyro_fit = DPGMM(truncation=5, engine="pyro", max_iter=300, seed=0).fit(X)
    assert adjusted_rand_score(labels, pyro_fit.predict(X)) >= 0.95
    assert pyro_fit.n_active_ == 3
    history = pyro_fit.elbo_history_
    assert history[-50:].mean() > history[:50].mean()  # Adam climbs the same bound
    # both engines optimise the same ELBO; the closed-form engine gets (slightly) higher
    assert natural.elbo_ >= pyro_fit.elbo_ - 1.0
    assert pyro_fit.elbo_ >= natural.elbo_ - 0.03 * abs(natural.elbo_)
    assert pyro_fit.score(X) == pytest.approx(natural.score(X), abs=0.1)


@pytest.mark.slow  # Pyro SVI, ~25 s
def test_pyro_engine_learns_pitman_yor_concentration():
    X, labels = PlantedMixture(3, 2, "diag", seed=12).sample(300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = DPGMM(
            truncation=6,
            prior="pitman_yor",
            discount=0.2,
            learn_concentration=True,
            covariance="diag",
            engine="pyro",
            max_iter=300,
        ).fit(X)
    assert adjusted_rand_score(labels, model.predict(X)) >= 0.95
    assert float(model.posterior_.concentration[0]) > 0


def test_restarts_keep_the_best_elbo_and_seeds_reproduce():
    X, _ = PlantedMixture(5, 2, "full", seed=13).sample(800)
    model = DPGMM(truncation=12, n_restarts=4, seed=3).fit(X)
    assert model.fit_result_.elbo.shape == (4,)
    assert model.elbo_ == pytest.approx(float(model.fit_result_.elbo.max()))
    again = DPGMM(truncation=12, n_restarts=4, seed=3).fit(X)
    np.testing.assert_array_equal(model.predict(X), again.predict(X))
    assert model.elbo_ == again.elbo_


def test_accepts_torch_tensors_and_float_lists():
    X, _ = PlantedMixture(2, 2, "full", seed=14).sample(300)
    a = DPGMM(truncation=5).fit(torch.tensor(X)).predict(X)
    b = DPGMM(truncation=5).fit(X.tolist()).predict(torch.tensor(X))
    np.testing.assert_array_equal(a, b)


def test_batch_size_larger_than_data_is_clamped_with_a_warning():
    X, _ = PlantedMixture(2, 2, "full", seed=15).sample(200)
    with pytest.warns(UserWarning, match="exceeds the 200 points"):
        DPGMM(truncation=5, batch_size=1000).fit(X)


GOOD = np.random.default_rng(0).normal(size=(50, 3))


@pytest.mark.parametrize(
    "X, match",
    [
        (np.where(np.arange(150).reshape(50, 3) == 7, np.nan, GOOD), "NaN or Inf"),
        (np.where(np.arange(150).reshape(50, 3) == 7, np.inf, GOOD), "NaN or Inf"),
        (GOOD[:, 0], r"shape \(N, D\).*reshape\(-1, 1\)"),
        (GOOD[None], r"shape \(N, D\)"),
        (np.zeros((10, 0)), "no features"),
        (GOOD[:1], "at least 2 points"),
        (np.array([["a", "b"], ["c", "d"]]), "must hold numbers"),
    ],
)
def test_bad_data_is_a_clear_error(X, match):
    with pytest.raises(ValueError, match=match):
        DPGMM(truncation=5).fit(X)


def test_finite_check_sees_through_sums_that_overflow_or_cancel():
    """The finite check first sums the points (one reduction): finite values whose sum overflows must
    still pass, and +Inf with -Inf (a NaN sum) must still be reported value by value."""
    from dpmodels._validation import as_points

    big = np.full((4, 2), 3e38, dtype=np.float32)  # finite, but the float32 sum is inf
    assert as_points(big).shape == (4, 2)
    both = GOOD.copy()
    both[3, 1], both[4, 2] = np.inf, -np.inf
    with pytest.raises(ValueError, match="2 NaN or Inf values"):
        DPGMM(truncation=5).fit(both)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"truncation": 0}, "truncation must be an integer >= 1"),
        ({"truncation": 2.5}, "truncation must be an integer >= 1"),
        ({"prior": "gem"}, "prior must be one of"),
        ({"covariance": "spherical"}, "covariance must be one of"),
        ({"concentration": 0.0}, "concentration must be > 0"),
        ({"prior": "pitman_yor", "discount": 1.2}, r"discount must lie in \[0, 1\)"),
        ({"engine": "mcmc"}, "engine must be one of"),
        ({"prior": "finite", "learn_concentration": True}, "use engine='pyro'"),
        ({"prior": "beta_sticks", "learn_concentration": True}, "use engine='pyro'"),
        ({"prior": "beta_stick"}, "did you mean prior='beta_sticks'"),
        ({"prior": "dp", "prior_settings": {"a": 0.5}}, "only applies to prior='beta_sticks'"),
        ({"prior": "beta_sticks", "prior_settings": {"a": 0.0}}, "a must be > 0"),
        ({"prior_settings": {"b": 2.0}}, "unknown prior setting 'b'"),
        ({"batch_size": 0}, "batch_size must be an integer"),
        ({"n_restarts": 0}, "n_restarts must be an integer"),
        ({"device": "tpu"}, "device must be"),
        ({"max_iter": 0}, "max_iter must be an integer"),
        ({"tol": 0.0}, "tol must be > 0"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    model = DPGMM(**kwargs)  # the constructor only stores its arguments (scikit-learn's convention)
    assert model.get_params() == {**DPGMM().get_params(), **kwargs}
    with pytest.raises(ValueError, match=match):
        model.validate()
    with pytest.raises(ValueError, match=match):  # fit validates before touching the data
        model.fit(GOOD)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when no GPU exists")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        DPGMM(device="cuda").fit(GOOD)


def test_predict_before_fit_and_feature_mismatch():
    with pytest.raises(NotFittedError, match="call fit"):
        DPGMM().predict(GOOD)
    model = DPGMM(truncation=3).fit(GOOD)
    with pytest.raises(ValueError, match="fitted on 3"):
        model.predict(GOOD[:, :2])
