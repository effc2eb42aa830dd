"""Assemble an ArviZ ``InferenceData`` from mixture draws: one layout for every posterior source.

The variational posterior (:mod:`.inference_data`) and the Gibbs sampler (:mod:`.gibbs`) both
hand over draws shaped ``(C, S, K, ...)`` (chains, draws, components) already aligned across
chains; this module adds the label-invariant quantities, the pointwise log-likelihood with the
assignment summed out, and the groups, dims, coordinates and attributes documented below.

Groups: ``posterior`` (``weights``, ``means``, ``covariances`` or ``variances``, optional
``concentration``, ``n_active``, ``sorted_weights``, ``weight_entropy``; low-rank components:
``loadings`` ``(component, feature, factor)``, ``noise_variances`` and ``variances``, the
marginal per-feature variances ``diag(W W^T) + noise``, which unlike the loadings do not depend
on the factors' arbitrary rotation), ``log_likelihood``
(``x``: ``(chain, draw, point)``), ``observed_data`` (``x``: ``(point, feature)``), optional
``posterior_predictive`` and ``sample_stats``, and ``elbo`` (``(chain, iteration)``) for
variational fits. Every group carries the same attributes, including ``dpmodels_format``.
"""

from __future__ import annotations

import datetime
import importlib.metadata

import numpy as np
import pyro
import torch
import xarray as xr

from ._arviz import az
from .draws import invariant_quantities, mixture_log_likelihood, sample_predictive

__all__ = ["FORMAT_VERSION", "DIMS", "build_inference_data", "version_attrs"]

FORMAT_VERSION = 1
DIMS = {
    "weights": ["component"],
    "means": ["component", "feature"],
    "covariances": ["component", "feature", "feature_bis"],
    "variances": ["component", "feature"],
    "noise_variances": ["component", "feature"],
    "loadings": ["component", "feature", "factor"],
    "sorted_weights": ["rank"],
}


def version_attrs() -> dict[str, str]:
    """Library versions and a UTC creation time, as netCDF-safe strings."""
    try:
        own = importlib.metadata.version("dpmodels")
    except importlib.metadata.PackageNotFoundError:
        own = "unknown"
    return {
        "dpmodels_version": own,
        "torch_version": str(torch.__version__),
        "pyro_version": str(pyro.__version__),
        "arviz_version": str(az.__version__),
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def _netcdf_safe(attrs: dict) -> dict:
    """netCDF attributes must be numbers or strings: booleans become 0/1, ``None`` becomes ``""``."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, (bool, np.bool_)):
            out[key] = int(value)
        elif value is None:
            out[key] = ""
        else:
            out[key] = value
    return out


def build_inference_data(
    draws: dict[str, np.ndarray],
    covariance: str,
    attrs: dict,
    *,
    active_threshold: float,
    observed: np.ndarray | None = None,
    point_index: np.ndarray | None = None,
    posterior_predictive: bool = False,
    sample_stats: dict[str, np.ndarray] | None = None,
    elbo: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> az.InferenceData:
    """The ``InferenceData`` of aligned mixture draws.

    ``draws``: ``weights (C, S, K)``, ``means (C, S, K, D)``, ``precisions`` and ``covariances``
    ``(C, S, K, D, D)`` (full) or ``(C, S, K, D)`` (diag; low rank: the noise's, with ``loadings
    (C, S, K, D, r)``), optionally ``concentration (C, S)``.
    ``observed (n, D)`` are the points scored in ``log_likelihood`` (original row numbers in
    ``point_index``); ``elbo (C, T)`` is the per-chain ELBO history (NaN-padded).
    """
    weights = draws["weights"]
    C, S, K = weights.shape
    D = draws["means"].shape[-1]
    posterior = {"weights": weights, "means": draws["means"]}
    loadings = draws.get("loadings") if covariance == "lowrank" else None
    if covariance == "lowrank":
        if loadings is None:
            raise ValueError("covariance='lowrank' needs draws['loadings'] (C, S, K, D, r).")
        posterior["loadings"] = loadings
        posterior["noise_variances"] = draws["covariances"]
        posterior["variances"] = draws["covariances"] + (loadings**2).sum(-1)  # diag(W W^T) + noise
    else:
        posterior["covariances" if covariance == "full" else "variances"] = draws["covariances"]
    if "concentration" in draws:
        posterior["concentration"] = draws["concentration"]
    posterior.update(invariant_quantities(weights, active_threshold))
    coords = {
        "component": np.arange(K),
        "rank": np.arange(K),
        "feature": np.arange(D),
        "feature_bis": np.arange(D),
    }
    if loadings is not None:
        coords["factor"] = np.arange(loadings.shape[-1])
    groups: dict = {"posterior": posterior}
    dims = {k: v for k, v in DIMS.items() if k != "x"}
    if observed is not None:
        n = observed.shape[0]
        log_w = np.log(np.clip(weights, np.finfo(np.float64).tiny, None))
        groups["log_likelihood"] = {
            "x": mixture_log_likelihood(
                observed, log_w, draws["means"], draws["precisions"], covariance, loadings=loadings
            )
        }
        groups["observed_data"] = {"x": observed}
        coords["point"] = np.arange(n) if point_index is None else point_index
        if posterior_predictive:
            rng = rng if rng is not None else np.random.default_rng(0)
            groups["posterior_predictive"] = {
                "x": sample_predictive(
                    n, weights, draws["means"], draws["covariances"], covariance, rng, loadings=loadings
                )
            }
    if sample_stats:
        groups["sample_stats"] = sample_stats
    safe = _netcdf_safe({**attrs, "dpmodels_format": FORMAT_VERSION, **version_attrs()})
    datasets = {}
    for name, data in groups.items():
        group_dims = dict(dims)
        group_dims["x"] = ["point"] if name == "log_likelihood" else ["point", "feature"]
        default = [] if name == "observed_data" else None  # observed data has no (chain, draw)
        datasets[name] = az.dict_to_dataset(
            data, attrs=safe, coords=coords, dims=group_dims, default_dims=default, library=None
        )
    if elbo is not None:
        datasets["elbo"] = xr.Dataset(
            {"elbo": (("chain", "iteration"), np.asarray(elbo, dtype=np.float64))},
            coords={"chain": np.arange(C), "iteration": np.arange(elbo.shape[1])},
            attrs=safe,
        )
    return az.InferenceData(**datasets)
