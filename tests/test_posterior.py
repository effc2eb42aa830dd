"""The posterior object: draws, canonical order, entropy, and the Pyro engine with minibatches."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import homogeneity_score

from dpmodels import DPGMM, ConvergenceWarning
from dpmodels.data import PlantedMixture


@pytest.fixture(scope="module")
def fitted():
    X, labels = PlantedMixture(3, 2, "full", seed=60).sample(1500)
    return X, labels, DPGMM(truncation=8).fit(X)


@pytest.mark.parametrize("cov", ["full", "diag"])
@pytest.mark.parametrize(
    "prior, kwargs",
    [
        ("dp", {}),
        ("finite", {}),
        ("dp", {"learn_concentration": True}),
        ("beta_sticks", {"prior_settings": {"a": 0.5}}),
    ],
)
def test_draws_have_the_documented_shapes_and_centre_on_the_posterior_means(cov, prior, kwargs):
    X, _ = PlantedMixture(3, 2, cov, seed=61).sample(1000)
    post = DPGMM(truncation=6, covariance=cov, prior=prior, **kwargs).fit(X).posterior_
    draws = post.sample(2000, seed=0)
    assert draws["weights"].shape == (2000, 1, 6)
    assert draws["means"].shape == (2000, 1, 6, 2)
    cov_shape = (2000, 1, 6, 2, 2) if cov == "full" else (2000, 1, 6, 2)
    assert draws["covariances"].shape == cov_shape
    torch.testing.assert_close(draws["weights"].sum(-1), torch.ones(2000, 1), atol=1e-5, rtol=0)
    torch.testing.assert_close(draws["weights"].mean(0), post.weights, atol=0.01, rtol=0)
    active = post.active[0]
    torch.testing.assert_close(draws["means"].mean(0)[0, active], post.means[0, active], atol=0.05, rtol=0)
    assert ("concentration" in draws) == kwargs.get("learn_concentration", False)


def test_canonical_order_and_active_share(fitted):
    X, _, model = fitted
    post = model.posterior_
    assert bool((post.weights[0, :-1] >= post.weights[0, 1:]).all())
    counts = post.counts[0]
    assert bool((counts[: model.n_active_] > 0.01 * len(X)).all())
    labels = model.predict(X)
    assert set(np.unique(labels)) == set(range(model.n_active_))  # largest clusters get the lowest ids


def test_entropy_is_high_only_between_clusters(fitted):
    X, _, model = fitted
    post = model.posterior_
    ent = post.assignment_entropy(X)[0]
    assert float(ent.max()) <= np.log(post.truncation) + 1e-6
    assert float(ent.min()) >= 0
    means = post.means[0, :2].double()
    midpoint = (0.5 * (means[0] + means[1])).float().unsqueeze(0)
    near_centre = post.means[0, :1].float()
    assert float(post.assignment_entropy(midpoint)[0, 0]) > float(post.assignment_entropy(near_centre)[0, 0])


@pytest.mark.slow  # Pyro SVI, ~7 s
def test_pyro_engine_with_minibatches_runs_and_keeps_the_clusters():
    X, labels = PlantedMixture(3, 2, "diag", seed=62).sample(600)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = DPGMM(truncation=5, covariance="diag", engine="pyro", batch_size=100, max_iter=100).fit(X)
    assert np.isfinite(model.elbo_)
    assert len(model.elbo_history_) == 100
    # 100 noisy steps from a 5-cluster k-means start may keep a split (no merge moves here),
    # but no cluster mixes two planted ones
    assert homogeneity_score(labels, model.predict(X)) > 0.95
