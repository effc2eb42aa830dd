"""Summaries of mixture posteriors: ArviZ tables, PSIS-LOO with a reading in words, prior comparison."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..estimator import DPGMM
from ._arviz import az
from .inference_data import to_inference_data

__all__ = [
    "summarize",
    "loo",
    "explain_loo",
    "compare_priors",
    "compare",
    "INVARIANT_VARIABLES",
    "ALIGNED_VARIABLES",
]

INVARIANT_VARIABLES = ("sorted_weights", "weight_entropy", "n_active")
ALIGNED_VARIABLES = ("weights", "concentration")


def summarize(idata: az.InferenceData, max_components: int | None = 10, **kwargs) -> pd.DataFrame:
    """``az.summary`` (mean, sd, HDI, MCSE, ESS, R-hat) of the label-invariant quantities and the
    aligned weights (and concentration, when learned), for the ``max_components`` largest ranks and
    components; ``kwargs`` go to ``az.summary``. ``n_active`` may be constant: ArviZ reports NaN
    R-hat for a constant, which is not a warning here."""
    if "posterior" not in idata.groups():
        raise ValueError(
            f"idata has no posterior group (groups: {idata.groups()}); build it with to_inference_data."
        )
    post = idata.posterior
    names = [v for v in (*INVARIANT_VARIABLES, *ALIGNED_VARIABLES) if v in post.data_vars]
    coords = {}
    if max_components is not None:
        coords = {
            "rank": post["rank"].values[:max_components],
            "component": post["component"].values[:max_components],
        }
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        # a constant draw (n_active identical everywhere) makes R-hat 0/0: NaN is the right answer
        warnings.filterwarnings(
            "ignore", message=".*(invalid value|divide by zero).*", category=RuntimeWarning
        )
        return az.summary(idata, var_names=names, coords=coords, **kwargs)


def loo(idata: az.InferenceData, **kwargs) -> az.ELPDData:
    """PSIS-LOO (``az.loo`` with ``pointwise=True``) of the ``log_likelihood`` group.

    ArviZ's warning about large Pareto ``k`` is caught and kept in the result (``warning`` is True,
    ``pareto_k`` lists the points); :func:`explain_loo` says what it means.
    """
    if "log_likelihood" not in idata.groups():
        raise ValueError(
            "idata has no log_likelihood group; pass X (or heldout) to to_inference_data to score points."
        )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        return az.loo(idata, pointwise=True, **kwargs)


def explain_loo(result: az.ELPDData) -> str:
    """The LOO result in words: expected log predictive density per point and the Pareto ``k`` counts."""
    k = np.asarray(result.pareto_k)
    n = k.size
    good = float(result.good_k) if hasattr(result, "good_k") else 0.7
    bad, very_bad = int(((k > good) & (k <= 1)).sum()), int((k > 1).sum())
    text = (
        f"elpd_loo = {result.elpd_loo:.1f} (SE {result.se:.1f}) over {n} points, "
        f"{result.elpd_loo / n:.3f} nats per point; effective parameters p_loo = {result.p_loo:.1f}. "
    )
    if bad + very_bad == 0:
        return text + f"All Pareto k <= {good:.2f}: the PSIS-LOO estimate is reliable."
    return text + (
        f"{bad} points have {good:.2f} < k <= 1 and {very_bad} have k > 1: for them the leave-one-out "
        "posterior differs strongly from the full one (influential points or outliers), so the estimate "
        "is unreliable there; use more draws, K-fold CV, or a held-out set."
    )


def compare_priors(
    X,
    priors: Sequence[str] = ("dp", "pitman_yor", "finite"),
    truncations: Sequence[int] = (10,),
    restarts: int = 4,
    *,
    num_draws: int = 200,
    heldout=None,
    seed: int = 0,
    prior_kwargs: dict[str, dict] | None = None,
    **dpgmm_kwargs,
) -> tuple[pd.DataFrame, dict[str, az.InferenceData]]:
    """Fit every ``prior x truncation`` variant ``restarts`` times (the chains), build their
    ``InferenceData`` and rank them by PSIS-LOO (``az.compare``).

    ``prior_kwargs`` maps a prior name to extra ``DPGMM`` arguments (e.g. ``{"pitman_yor":
    {"discount": 0.3}}``); a Pitman–Yor prior without one gets ``discount=0.25``. Returns the
    comparison table (best first) and the ``InferenceData`` by variant name ``"{prior}_K{K}"``.
    """
    if not priors or not truncations:
        raise ValueError("compare_priors needs at least one prior and one truncation.")
    extra = {"pitman_yor": {"discount": 0.25}, **(prior_kwargs or {})}
    idatas: dict[str, az.InferenceData] = {}
    for prior in priors:
        for K in truncations:
            kw = {**dpgmm_kwargs, **extra.get(prior, {}), "prior": prior, "truncation": int(K)}
            fits = [DPGMM(seed=seed + 1000 * r, **kw).fit(X) for r in range(restarts)]
            idatas[f"{prior}_K{K}"] = to_inference_data(
                fits, X, num_draws=num_draws, heldout=heldout, seed=seed
            )
    return compare(idatas), idatas


def compare(idatas: dict[str, az.InferenceData]) -> pd.DataFrame:
    """``az.compare`` by PSIS-LOO, best model first. Two known notices are silenced: ArviZ's
    large-``k`` warning (see :func:`explain_loo` on each model) and pandas' deprecation of
    ``sort_values(inplace=True)``, which ArviZ 0.23 calls internally (nothing we can change)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Estimated shape parameter of Pareto", category=UserWarning)
        warnings.filterwarnings("ignore", message="The inplace keyword in DataFrame.sort_values")
        return az.compare(idatas, ic="loo")
