"""A fit does not depend on the data's units or offset, and says so when it runs out of components.

Before the estimator standardised internally, data scaled by 1e-5 gave 1 cluster instead of 3 (a
fixed ridge swamped it) and data offset by 1e8 gave 6 (float32 keeps 8-unit steps there).
"""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import adjusted_rand_score

from dpmodels import DPGMM, TruncationWarning
from dpmodels.data import PlantedMixture


def _planted(seed: int, n_clusters: int = 3, n: int = 300, separation: float = 6.0):
    X, y = PlantedMixture(n_clusters, 2, "full", separation, seed=seed).sample(n)
    return np.asarray(X, dtype=np.float64), np.asarray(y)


X0, Y0 = _planted(0)
REFERENCE = {cov: DPGMM(truncation=8, covariance=cov, seed=0).fit(X0) for cov in ("full", "diag")}


@settings(max_examples=12, deadline=None)
@given(
    log_scale=st.floats(-6.0, 6.0),
    negative=st.booleans(),
    offset=st.floats(-1e8, 1e8),
    covariance=st.sampled_from(["full", "diag"]),
)
def test_affine_rescaling_gives_the_same_clusters(log_scale, negative, offset, covariance):
    a = (-1.0 if negative else 1.0) * 10.0**log_scale
    shift = offset * np.array([1.0, -0.5])
    ref = REFERENCE[covariance]
    X = a * X0 + shift
    model = DPGMM(truncation=8, covariance=covariance, seed=0).fit(X)
    assert model.n_active_ == ref.n_active_ == 3
    assert adjusted_rand_score(ref.predict(X0), model.predict(X)) == 1.0
    # means and covariances come back in the data's units; float64 leaves |offset / a| * 2e-16
    # of rounding noise in the standardised points (1e-3 at the extreme |offset / a| = 1e14)
    noise = 2.2e-16 * np.abs(shift).max() / abs(a)
    order = np.argsort(ref.means_[:3, 0])
    got = np.sort(((model.means_[:3] - shift) / a)[:, 0])
    np.testing.assert_allclose(got, ref.means_[:3][order, 0], atol=1e-6 + 20 * noise)
    np.testing.assert_allclose(model.covariances_[0] / a**2, ref.covariances_[0], atol=1e-6 + 20 * noise)
    # densities gain the Jacobian -D log|a|
    expected = ref.score_samples(X0) - X0.shape[1] * np.log(abs(a))
    np.testing.assert_allclose(model.score_samples(X), expected, atol=1e-4 + 1000 * noise)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_and_huge_units_recover_the_planted_clusters(seed):
    X, y = _planted(seed)
    for a, b in [(1e-5, 0.0), (1.0, 1e8), (1e5, -3e7)]:
        model = DPGMM(truncation=10, seed=seed).fit(a * X + b)
        assert model.n_active_ == 3, (a, b)
        assert adjusted_rand_score(y, model.predict(a * X + b)) > 0.95


def test_all_components_active_warns_to_raise_the_truncation():
    X, _ = _planted(3, n_clusters=12, n=1200, separation=8.0)
    with pytest.warns(TruncationWarning, match="truncation"):
        model = DPGMM(truncation=5, seed=0).fit(X)
    assert model.n_active_ == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error", TruncationWarning)
        assert DPGMM(truncation=30, seed=0).fit(X).n_active_ < 30


def test_posterior_and_inference_data_speak_the_data_units():
    """What maps and diagnostics consume (``posterior_``, InferenceData) is in the data's units."""
    import torch

    from dpmodels.diagnostics import to_inference_data

    a, b = 1e-3, 50.0
    ref, model = REFERENCE["full"], DPGMM(truncation=8, seed=0).fit(a * X0 + b)
    np.testing.assert_allclose(
        model.posterior_.means[0, :3].numpy(), a * ref.posterior_.means[0, :3].numpy() + b, atol=1e-5
    )
    x = torch.tensor(a * X0 + b, dtype=torch.float32)
    np.testing.assert_array_equal(model.posterior_.predict(x)[0].numpy(), model.predict(a * X0 + b))
    ll_ref = to_inference_data([ref], X0, num_draws=10, seed=0).log_likelihood["x"].values
    ll = to_inference_data([model], a * X0 + b, num_draws=10, seed=0).log_likelihood["x"].values
    np.testing.assert_allclose(ll, ll_ref - X0.shape[1] * np.log(a), atol=0.02)  # float32 in user units
