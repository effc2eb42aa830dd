"""Diagnostic figures and the LOO-based comparison of weight priors."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from dpmodels import DPGMM
from dpmodels.data import PlantedMixture
from dpmodels.diagnostics import (
    compare_priors,
    plot_active_components,
    plot_elbo,
    plot_predictive_check,
    plot_weights_forest,
    to_inference_data,
)
from dpmodels.viz.diagnostics import plot_n_active


@pytest.fixture(scope="module")
def idata():
    X, _ = PlantedMixture(3, 2, seed=2).sample(150)
    fits = [DPGMM(truncation=6, seed=s).fit(X) for s in range(2)]
    return to_inference_data(fits, X, num_draws=30, posterior_predictive=True)


@pytest.mark.parametrize(
    "plot", [plot_elbo, plot_active_components, plot_weights_forest, plot_predictive_check]
)
def test_plots_return_figures(idata, plot):
    fig = plot(idata)
    try:
        assert isinstance(fig, Figure) and fig.axes
    finally:
        plt.close(fig)


def test_plot_errors(idata):
    no_pp = to_inference_data([DPGMM(truncation=6).fit(idata.observed_data["x"].values)], num_draws=5)
    with pytest.raises(ValueError, match="posterior_predictive"):
        plot_predictive_check(no_pp)
    with pytest.raises(ValueError, match="chains, draws"):
        plot_n_active(np.arange(5))


def test_predictive_bars_sum_to_one(idata):
    fig = plot_n_active(idata.posterior["n_active"].values)
    try:
        heights = [p.get_height() for p in fig.axes[0].patches]
        assert np.isclose(sum(heights), 2.0)  # two chains, each a distribution over n_active
    finally:
        plt.close(fig)


def test_compare_priors_ranks_all_variants_without_warnings():
    X, _ = PlantedMixture(3, 2, seed=4).sample(150)
    table, idatas = compare_priors(X, truncations=(6,), restarts=2, num_draws=60)
    assert set(table.index) == {"dp_K6", "pitman_yor_K6", "finite_K6"}
    assert set(idatas) == set(table.index)
    assert table["rank"].min() == 0 and np.isfinite(table["elpd_loo"]).all()
    assert idatas["pitman_yor_K6"].posterior.attrs["discount"] == 0.25
