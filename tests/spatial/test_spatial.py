"""Spatially coupled assignments: grid, monotone coupled fit, recovery, Pyro bound, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from pyro.infer import Trace_ELBO
from sklearn.metrics import adjusted_rand_score

from dpmodels import DPGMM
from dpmodels.infer.natural import centred_base
from dpmodels.infer.updates import elbo_from_stats, stats_from_responsibilities
from dpmodels.models import dpgmm_guide, dpgmm_model
from dpmodels.models.family import quadratic_plan
from dpmodels.spatial import (
    CoupledOptions,
    SpatialDPGMM,
    edge_agreement,
    fit_coupled,
    grid_from_index,
    mean_field_assignments,
    unary_logits,
)
from tests.conftest import PRIORS, make_spec


def regions(seed: int, images: int = 3, size: int = 20, sep: float = 2.5):
    """Images of four rectangular regions, one 2-D Gaussian per region (unit noise, overlapping at
    ``sep``): the per-position mixture confuses neighbours that a coupled model should not."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    labels = []
    for _ in range(images):
        cy, cx = rng.integers(size // 3, 2 * size // 3, size=2)
        labels.append((xx >= cx).astype(int) + 2 * (yy >= cy).astype(int))
    labels = np.stack(labels).reshape(-1)
    means = sep * np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    X = means[labels] + rng.normal(size=(labels.size, 2))
    index = np.stack(np.meshgrid(np.arange(images), np.arange(size), np.arange(size), indexing="ij"), -1)
    return X, index.reshape(-1, 3), labels


def test_grid_neighbours_edges_and_colours():
    index = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 2]])
    grid = grid_from_index(index)
    nb = grid.neighbours.numpy()  # left, right, up, down
    assert nb[0].tolist() == [-1, 1, -1, 2]
    assert nb[3].tolist() == [2, -1, 1, -1]
    assert nb[4].tolist() == [-1, -1, -1, -1]  # (1, 0, 2) is two steps away; image 0 is another image
    assert sorted(map(tuple, grid.edges.tolist())) == [(0, 1), (0, 2), (1, 3), (2, 3)]
    assert grid.colour.tolist() == [0, 1, 1, 0, 0, 0]
    # no edge joins two points of one colour (the checkerboard update is a block update)
    e = grid.edges
    assert bool((grid.colour[e[:, 0]] != grid.colour[e[:, 1]]).all())
    # row order does not matter
    perm = np.array([5, 3, 0, 4, 1, 2])
    g2 = grid_from_index(index[perm])
    assert g2.num_edges == 4


@pytest.mark.parametrize(
    "index, match",
    [
        (np.zeros((4, 2), dtype=int), "shape \\(N, 3\\)"),
        (np.array([[0, 0, 0], [0, 0, 0]]), "same \\(image, y, x\\) twice"),
        (np.array([[0, -1, 0], [0, 0, 0]]), "negative"),
    ],
)
def test_grid_bad_index(index, match):
    with pytest.raises(ValueError, match=match):
        grid_from_index(index)


@pytest.mark.parametrize("coupling", [-0.5, float("nan"), float("inf"), True, "1"])
def test_bad_coupling_is_one_clear_error(coupling):
    with pytest.raises(ValueError, match="coupling"):
        SpatialDPGMM(coupling=coupling).validate()


def test_index_that_does_not_match_the_points():
    X, index, _ = regions(0, images=1, size=8)
    with pytest.raises(ValueError, match="index has 63 rows but X has 64 points"):
        SpatialDPGMM(coupling=1.0, truncation=5).fit(X, index[:-1])
    model = SpatialDPGMM(coupling=1.0, truncation=5).fit(X, index)
    with pytest.raises(ValueError, match="grid index has 64 rows but there are 10 points"):
        model.predict(X[:10], index)


def test_zero_coupling_is_the_mixture_exactly():
    X, index, _ = regions(1)
    plain = DPGMM(truncation=10, seed=3).fit(X)
    spatial = SpatialDPGMM(coupling=0.0, truncation=10, seed=3).fit(X, index)
    assert spatial.elbo_ == plain.elbo_
    np.testing.assert_array_equal(spatial.means_, plain.means_)
    np.testing.assert_array_equal(spatial.predict(X, index), plain.predict(X))


def test_coupled_bound_at_zero_coupling_is_the_mixture_elbo():
    """The coupled machinery with beta = 0 reproduces the mixture's E-step and closed-form ELBO."""
    X, index, _ = regions(2)
    data = torch.tensor(X, dtype=torch.float64).unsqueeze(0)
    spec = make_spec(data, PRIORS["dp"], "full", 8)
    plain = DPGMM(truncation=8, seed=0).fit(X)
    base_c, shift = centred_base(spec)
    params = plain.posterior_.params.map(lambda t: t.double())
    params.mean = params.mean - shift.unsqueeze(1)
    x = data - shift.unsqueeze(1)
    grid = grid_from_index(index)
    log_r = mean_field_assignments(unary_logits(params, x, 4096), grid, 0.0)
    stats = stats_from_responsibilities(log_r, x, quadratic_plan(params).form)
    from tests.infer.elbo_check import closed_form_elbo

    mixture = closed_form_elbo(data, spec, plain.posterior_.params)
    coupled = elbo_from_stats(stats, params, base_c, spec.prior) + 0.0 * edge_agreement(log_r, grid.edges)
    assert torch.allclose(coupled, mixture, rtol=1e-10, atol=1e-8)


@pytest.mark.parametrize("cov", ["full", "diag"])
@pytest.mark.parametrize(
    "prior_name",
    ["dp", *(pytest.param(p, marks=pytest.mark.slow) for p in ("pitman_yor", "finite", "dp_learned"))],
)
def test_coupled_bound_never_decreases(cov, prior_name):
    """Float64 data: every coupled iteration (checkerboard E-step, conjugate M-step) raises the bound."""
    from dpmodels.infer.natural import NaturalOptions, fit_natural

    X, index, _ = regions(4)
    data = torch.tensor(X, dtype=torch.float64).unsqueeze(0)
    spec = make_spec(data, PRIORS[prior_name], cov, 10)
    start = fit_natural(data, spec, seed=1, options=NaturalOptions(progress=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a short coupled phase may stop before tol
        res = fit_coupled(
            data, spec, start, grid_from_index(index), CoupledOptions(0.8, max_iter=40, tol=1e-10)
        )
    steps = res.info["coupled_iterations"]
    hist = res.elbo_history[-steps:, 0].numpy()
    assert steps >= 5
    assert np.all(np.diff(hist) >= -1e-10 * np.abs(hist[1:])), np.diff(hist).min()
    assert float(res.elbo[0]) > float(start.elbo[0])  # expected agreements add to the bound


def test_estimator_bound_never_decreases_beyond_float32_round_off():
    X, index, _ = regions(4)
    model = SpatialDPGMM(coupling=0.8, truncation=10, coupled_tol=1e-7, seed=1).fit(X, index)
    steps = model.fit_result_.info["coupled_iterations"]
    hist = model.elbo_history_[-steps - 1 :]  # the mixture's last value, then the coupled iterations
    assert np.all(np.diff(hist) >= -1e-6 * np.abs(hist[1:])), np.diff(hist).min()
    assert model.elbo_ > model.mixture_elbo_


@pytest.mark.parametrize("seed", [0, *(pytest.param(s, marks=pytest.mark.slow) for s in (1, 2, 3))])
def test_coupling_recovers_noisy_regions(seed):
    """Overlapping region Gaussians: per-position assignments are noisy, coupled ones follow regions.

    The coupled phase starts from the mixture fit and has no split moves: where the mixture merged
    two regions (seeds 2 and 3 here) the coupled map is cleaner but keeps the merge."""
    X, index, labels = regions(seed)
    plain = DPGMM(truncation=10, seed=seed).fit(X)
    spatial = SpatialDPGMM(coupling=1.0, truncation=10, seed=seed).fit(X, index)
    ari_plain = adjusted_rand_score(labels, plain.predict(X))
    ari_fit = adjusted_rand_score(labels, spatial.responsibilities_.argmax(1))
    ari_grid = adjusted_rand_score(labels, spatial.predict(X, index))
    assert ari_fit > ari_plain + 0.15, (ari_plain, ari_fit)
    assert abs(ari_grid - ari_fit) < 0.05
    assert spatial.n_active_ <= plain.n_active_
    if plain.n_active_ == 4:
        assert ari_fit > 0.85, (ari_plain, ari_fit)
    np.testing.assert_array_equal(spatial.predict(X), spatial.predict_proba(X).argmax(1))  # uncoupled


@pytest.mark.parametrize("cov", [pytest.param("full", marks=pytest.mark.slow), "diag"])  # full: ~45 s
def test_closed_form_coupled_bound_equals_pyro_trace_elbo(cov):
    """The coupled bound is what Pyro's Trace_ELBO estimates for the Potts model and the guide that
    samples z from the coupled responsibilities (within 3 SE)."""
    X, index, _ = regions(5, images=2, size=6)
    data = torch.tensor(X, dtype=torch.float64).unsqueeze(0)
    spec = make_spec(data, PRIORS["dp"], cov, 5)
    grid = grid_from_index(index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short fits: the check needs a state, not convergence
        from dpmodels.infer.natural import NaturalOptions, fit_natural

        res = fit_natural(data, spec, options=NaturalOptions(max_iter=5, progress=False, merge=False))
        res = fit_coupled(data, spec, res, grid, CoupledOptions(coupling=0.7, max_iter=3))
    closed = float(res.elbo[0])
    log_r = res.info["log_resp"].double()
    edges = grid.edges
    elbo = Trace_ELBO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        draws = np.array(
            [
                -elbo.loss(
                    lambda d: dpgmm_model(d, spec, coupling=0.7, edges=edges),
                    lambda d: dpgmm_guide(d, spec, res.params, log_resp=log_r),
                    data,
                )
                for _ in range(600)
            ]
        )
    # the bound of fit_coupled is at its last M-step's globals and the E-step before it: recompute the
    # closed form at exactly those responsibilities and globals
    base_c, shift = centred_base(spec)
    params = res.params.map(lambda t: t.double())
    params.mean = params.mean - shift.unsqueeze(1)
    stats = stats_from_responsibilities(log_r, data - shift.unsqueeze(1), quadratic_plan(params).form)
    exact = float(
        elbo_from_stats(stats, params, base_c, spec.prior)[0] + 0.7 * edge_agreement(log_r, edges)[0]
    )
    assert math.isclose(exact, closed, rel_tol=1e-6, abs_tol=1e-4)
    se = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - exact) < 3 * se + 1e-3, (draws.mean(), exact, se)


def test_coupled_fit_is_batched_over_restarts():
    X, index, labels = regions(6)
    model = SpatialDPGMM(coupling=1.0, truncation=10, n_restarts=2, seed=0).fit(X, index)
    plain = DPGMM(truncation=10, n_restarts=2, seed=0).fit(X)
    assert model.responsibilities_.shape == (len(X), 10)
    assert model.elbo_ > model.mixture_elbo_  # the kept restart is the best by the coupled bound
    ari_plain = adjusted_rand_score(labels, plain.predict(X))
    assert adjusted_rand_score(labels, model.responsibilities_.argmax(1)) > ari_plain + 0.15
