"""The natural-gradient engine: honest ELBO, monotone full-batch ascent, minibatches, batching."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from dpmodels.data import PlantedMixture
from dpmodels.infer import ConvergenceWarning, NaturalOptions, fit_natural
from dpmodels.models import dpgmm_guide, dpgmm_model
from dpmodels.posterior import MixturePosterior
from tests.conftest import PRIORS, make_spec, two_blobs
from tests.infer.elbo_check import closed_form_elbo, pyro_elbo_draws


def _short_fit(data, spec, iters):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fit_natural(data, spec, options=NaturalOptions(max_iter=iters, progress=False, merge=False))


@pytest.mark.parametrize(
    "prior_name, cov",
    [  # one pair in the inner loop (pytest -m "not slow"); every pair in the full suite (Pyro's ELBO: ~1 min each)
        pytest.param(p, c, marks=() if (p, c) == ("dp", "diag") else pytest.mark.slow)
        for p in PRIORS
        for c in ("full", "diag")
    ],
)
def test_closed_form_elbo_equals_pyro_trace_enum_elbo(prior_name, cov):
    """The engine's ELBO is Pyro's TraceEnum_ELBO of the same model and guide (within 3 SE)."""
    data = two_blobs()
    spec = make_spec(data, PRIORS[prior_name], cov, 5)
    res = _short_fit(data, spec, 3)
    closed = float(closed_form_elbo(data, spec, res.params)[0])
    assert closed >= float(res.elbo[0])  # a fresh E-step can only raise the bound
    draws = pyro_elbo_draws(
        lambda d: dpgmm_model(d, spec), lambda d: dpgmm_guide(d, spec, res.params), data, 400
    )
    se = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - closed) < 3 * se + 1e-3, (draws.mean(), closed, se)


@pytest.mark.parametrize("cov", ["full", "diag"])
@pytest.mark.parametrize("prior_name", list(PRIORS))
def test_full_batch_elbo_never_decreases(prior_name, cov):
    X, _ = PlantedMixture(4, 3, cov, seed=3).sample(600)
    data = torch.tensor(X, dtype=torch.float64).unsqueeze(0)
    spec = make_spec(data, PRIORS[prior_name], cov, 15)
    res = fit_natural(data, spec, options=NaturalOptions(progress=False, tol=1e-7))
    hist = res.elbo_history[:, 0]
    assert len(hist) > 5
    assert bool((torch.diff(hist) >= -1e-9 * hist.abs()[1:]).all()), torch.diff(hist).min()


def test_merge_moves_fix_split_clusters():
    X, labels = PlantedMixture(6, 16, "full", seed=2).sample(3000)
    data = torch.tensor(X, dtype=torch.float32).unsqueeze(0)
    spec = make_spec(data, PRIORS["dp"], "full", 20)
    res = fit_natural(data, spec, options=NaturalOptions(progress=False))
    post = MixturePosterior(res.params, spec, res.counts, res.num_points)
    assert res.info["merges"] >= 1
    assert int(post.n_active[0]) == 6
    assert adjusted_rand_score(labels, post.predict(data)[0].numpy()) > 0.99


def test_minibatch_svi_recovers_planted_clusters():
    mix = PlantedMixture(5, 4, "full", seed=4)
    X, labels = mix.sample(8000)
    data = torch.tensor(X, dtype=torch.float32).unsqueeze(0)
    spec = make_spec(data, PRIORS["dp"], "full", 20)
    opts = NaturalOptions(progress=False, batch_size=500, max_epochs=3)
    res = fit_natural(data, spec, seed=1, options=opts)
    assert res.info["minibatch"]
    post = MixturePosterior(res.params, spec, res.counts, res.num_points)
    assert adjusted_rand_score(labels, post.predict(data)[0].numpy()) > 0.98
    assert int(post.n_active[0]) == 5


def test_batched_fits_are_independent():
    """B fits on different data in one call match the same fits run alone."""
    mixes = [PlantedMixture(k, 3, "diag", seed=10 + k) for k in (2, 3, 4)]
    data = torch.stack([torch.tensor(m.sample(800)[0], dtype=torch.float64) for m in mixes])  # (3, N, D)
    specs = make_spec(data, PRIORS["dp"], "diag", 10)
    batched = fit_natural(data, specs, options=NaturalOptions(progress=False))
    post = MixturePosterior(batched.params, specs, batched.counts, batched.num_points)
    assert post.n_active.tolist() == [2, 3, 4]
    for b in range(3):
        alone_spec = make_spec(data[b : b + 1], PRIORS["dp"], "diag", 10)
        alone = fit_natural(data[b : b + 1], alone_spec, options=NaturalOptions(progress=False))
        assert float(alone.elbo[0]) == pytest.approx(float(batched.elbo[b]), rel=1e-4)


def test_same_seed_same_result():
    X, _ = PlantedMixture(3, 2, "full", seed=5).sample(500)
    data = torch.tensor(X, dtype=torch.float32).unsqueeze(0)
    spec = make_spec(data, PRIORS["dp"], "full", 10)
    a = fit_natural(data, spec, seed=7, options=NaturalOptions(progress=False))
    b = fit_natural(data, spec, seed=7, options=NaturalOptions(progress=False))
    for name, t in a.params.tensors().items():
        assert torch.equal(t, getattr(b.params, name)), name
    np.testing.assert_array_equal(a.elbo_history.numpy(), b.elbo_history.numpy())


def test_non_convergence_is_a_warning_with_numbers():
    X, _ = PlantedMixture(3, 2, "full", seed=5).sample(500)
    data = torch.tensor(X, dtype=torch.float32).unsqueeze(0)
    spec = make_spec(data, PRIORS["dp"], "full", 10)
    with pytest.warns(ConvergenceWarning, match=r"stopped after 2 steps.*nats/point"):
        res = fit_natural(data, spec, options=NaturalOptions(max_iter=2, progress=False))
    assert not bool(res.converged.any())


@pytest.mark.parametrize("max_iter", [1, 2, 5])
def test_returned_counts_belong_to_the_returned_components(max_iter):
    """Counts follow sorting and merges, also when a fit stops at its iteration limit."""
    X, _ = PlantedMixture(4, 3, "full", seed=31).sample(1500)
    data = torch.tensor(X, dtype=torch.float64).unsqueeze(0)
    spec = make_spec(data, PRIORS["dp"], "full", 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_natural(
            data, spec, options=NaturalOptions(max_iter=max_iter, progress=False, merge_every=1)
        )
    expected = (res.params.dof - spec.base.dof.unsqueeze(-1)).clamp_min(0)
    torch.testing.assert_close(res.counts, expected.to(res.counts.dtype))
    assert float(res.counts.sum()) == pytest.approx(1500, rel=1e-4)
