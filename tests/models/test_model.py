"""The Pyro model and guide: they run under TraceEnum_ELBO and Predictive, with subsampling and
an outer batch plate, and minibatch ELBOs are unbiased."""

import math
import warnings

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Predictive, TraceEnum_ELBO

from dpmodels.infer import ConvergenceWarning, NaturalOptions, fit_natural
from dpmodels.models import MAX_PLATE_NESTING, dpgmm_guide, dpgmm_model
from dpmodels.models.base_measure import empirical_base_measure
from tests.conftest import PRIORS, make_spec, two_blobs
from tests.infer.elbo_check import closed_form_elbo, pyro_elbo_draws

COVS = ["full", "diag"]


def _fitted(data, prior, cov, K=5, iters=3):
    spec = make_spec(data, prior, cov, K)
    opts = NaturalOptions(max_iter=iters, progress=False, merge=False)
    with warnings.catch_warnings():  # a deliberately short fit may warn that it has not converged
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = fit_natural(data, spec, seed=0, options=opts)
    return spec, res.params


@pytest.mark.parametrize("cov", COVS)
@pytest.mark.parametrize("prior_name", list(PRIORS))
def test_model_and_guide_run_under_trace_enum_elbo(prior_name, cov):
    data = two_blobs().expand(2, -1, -1)  # two fits in the outer plate
    spec, params = _fitted(data, PRIORS[prior_name], cov)
    elbo = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)
    loss = elbo.loss(lambda d: dpgmm_model(d, spec), lambda d: dpgmm_guide(d, spec, params), data)
    assert math.isfinite(loss)
    trace = poutine.trace(lambda d: dpgmm_guide(d, spec, params)).get_trace(data)
    assert trace.nodes["mean"]["value"].shape == (2, 5, 2)
    assert trace.nodes["z"]["infer"]["enumerate"] == "parallel"


@pytest.mark.parametrize("cov", COVS)
@pytest.mark.parametrize("prior_name", ["dp", "pitman_yor", "finite", "dp_learned", "beta_sticks"])
def test_prior_predictive_shapes(prior_name, cov):
    base = empirical_base_measure(two_blobs().float(), cov).to()
    spec = make_spec(two_blobs().float(), PRIORS[prior_name], cov, 6)
    spec.base = base
    draws = Predictive(dpgmm_model, num_samples=7)(None, spec, num_points=25)
    assert draws["x"].shape == (7, 1, 25, 2)
    assert draws["z"].shape == (7, 1, 25)
    assert int(draws["z"].max()) < 6
    assert bool(torch.isfinite(draws["x"]).all())


def test_posterior_predictive_with_guide_samples_assignments_from_q():
    data = two_blobs()
    spec, params = _fitted(data, PRIORS["dp"], "full", iters=30)
    pred = Predictive(dpgmm_model, guide=lambda d, s: dpgmm_guide(d, s, params), num_samples=20)
    out = pred(data, spec)
    # points of the first blob (first 40) and of the second never share a label in any draw
    z = out["z"][:, 0]  # (S, N)
    assert bool((z[:, :40].unsqueeze(-1) != z[:, 40:].unsqueeze(-2)).all())


def test_collapsed_bound_is_at_least_the_mean_field_bound():
    """Summing z out inside the model (guide without z) gives a tighter bound (Jensen)."""
    data = two_blobs()
    spec, params = _fitted(data, PRIORS["dp"], "full", iters=5)
    mean_field = float(closed_form_elbo(data, spec, params).sum())
    hidden = poutine.block(lambda d: dpgmm_guide(d, spec, params), hide=["z"])
    draws = pyro_elbo_draws(lambda d: dpgmm_model(d, spec), hidden, data, 300)
    assert draws.mean() + 3 * draws.std() / math.sqrt(len(draws)) >= mean_field


@pytest.mark.slow  # a statistical check over many minibatches, ~25 s
@pytest.mark.parametrize("cov", COVS)
def test_minibatch_elbo_is_unbiased(cov):
    data = two_blobs()
    spec, params = _fitted(data, PRIORS["dp"], cov)
    full = float(closed_form_elbo(data, spec, params).sum())
    draws = pyro_elbo_draws(
        lambda d: dpgmm_model(d, spec, subsample_size=10),
        lambda d: dpgmm_guide(d, spec, params, subsample_size=10),
        data,
        1500,
    )
    se = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - full) < 4 * se, (draws.mean(), full, se)


def test_subsample_scaling_matches_pyro_convention():
    data = two_blobs()
    spec, params = _fitted(data, PRIORS["dp"], "diag")
    trace = poutine.trace(lambda d: dpgmm_model(d, spec, subsample_size=7)).get_trace(data)
    assert trace.nodes["x"]["value"].shape == (1, 7, 2)
    assert trace.nodes["x"]["scale"] == pytest.approx(70 / 7)
    pyro.clear_param_store()
