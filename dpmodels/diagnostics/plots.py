"""Diagnostic figures from an ``InferenceData``; each returns a matplotlib ``Figure``.

ELBO traces, the posterior of ``n_active`` and the predictive check are drawn by the plain
matplotlib functions of :mod:`dpmodels.viz.diagnostics`; the forest plot of the aligned weights
is ArviZ's ``plot_forest`` (ArviZ stays inside this package).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..viz.diagnostics import plot_elbo_traces, plot_n_active, plot_predictive_marginals
from ._arviz import az

__all__ = ["plot_elbo", "plot_active_components", "plot_weights_forest", "plot_predictive_check"]


def _need(idata: az.InferenceData, group: str, hint: str) -> None:
    if group not in idata.groups():
        raise ValueError(f"idata has no {group!r} group (groups: {idata.groups()}); {hint}.")


def plot_elbo(idata: az.InferenceData) -> Figure:
    """ELBO history of each chain (variational fits only)."""
    _need(idata, "elbo", "only to_inference_data of fitted DPGMMs records ELBO traces")
    return plot_elbo_traces(idata.elbo["elbo"].values)


def plot_active_components(idata: az.InferenceData) -> Figure:
    """Bars of the posterior of ``n_active`` per chain."""
    _need(idata, "posterior", "build it with to_inference_data or gibbs_sample")
    return plot_n_active(idata.posterior["n_active"].values)


def plot_weights_forest(idata: az.InferenceData, max_components: int = 8, hdi_prob: float = 0.94) -> Figure:
    """ArviZ forest plot (per chain) of the aligned weights of the ``max_components`` first components."""
    _need(idata, "posterior", "build it with to_inference_data or gibbs_sample")
    comps = idata.posterior["component"].values[:max_components]
    axes = az.plot_forest(
        idata, var_names=["weights"], coords={"component": comps}, hdi_prob=hdi_prob, combined=False
    )
    return np.atleast_1d(axes).ravel()[0].figure


def plot_predictive_check(
    idata: az.InferenceData, features: list[int] | None = None, replicates: int = 8, seed: int = 0
) -> Figure:
    """Histograms of the data's feature marginals against ``replicates`` random predictive draws."""
    _need(idata, "posterior_predictive", "call to_inference_data(..., posterior_predictive=True)")
    pred = idata.posterior_predictive["x"].values  # (C, S, n, D)
    flat = pred.reshape((-1,) + pred.shape[2:])
    pick = np.random.default_rng(seed).choice(flat.shape[0], min(replicates, flat.shape[0]), replace=False)
    return plot_predictive_marginals(idata.observed_data["x"].values, flat[pick], features)
