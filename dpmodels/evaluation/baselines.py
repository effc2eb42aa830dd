"""Baseline clusterings of a layer's positions, and ``compare_methods`` to score them beside the DPGMM.

* ``kmeans_silhouette``: k-means with ``K`` chosen without the truth, by the highest silhouette
  score (on a seeded subsample of ``silhouette_sample`` points) over ``K = 2..k_max``.
* ``kmeans_fixed``: k-means given ``K`` (with the true ``K`` it is an *oracle*).
* ``nmf_factorization``: Deep Feature Factorization (Collins et al., ECCV 2018): non-negative matrix
  factorisation ``A ≈ W H`` of the raw non-negative (post-ReLU) activations ``A (N, C)``; each
  position goes to its largest factor loading. Default ``K = 5``, the default of
  ``pytorch-grad-cam``'s ``DeepFeatureFactorization``; with the true ``K`` it is an oracle.
* ``bayesian_gmm``: scikit-learn's ``BayesianGaussianMixture`` with a Dirichlet-process weight prior
  (variational EM); ``K̂`` = components with weight above ``active_threshold``.

Fits run on at most ``fit_subsample`` seeded points; labels are then predicted for all points.
NMF and the Bayesian mixture run with a fixed iteration budget (as DFF does); scikit-learn's
``ConvergenceWarning`` is caught and reported as ``info["converged"]`` (a column of the table).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.decomposition import NMF
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import silhouette_score
from sklearn.mixture import BayesianGaussianMixture

from ..activations.types import LayerActivations
from ..maps.layer_maps import layer_maps
from .report import _masks, evaluate_layer, evaluate_point_labels

__all__ = [
    "METHODS",
    "BaselineResult",
    "bayesian_gmm",
    "compare_methods",
    "kmeans_fixed",
    "kmeans_silhouette",
    "nmf_factorization",
]

METHODS = ("dpgmm", "kmeans_silhouette", "kmeans_oracle", "dff_nmf", "dff_nmf_oracle", "bgmm_dp")
DFF_DEFAULT_K = 5


@dataclass
class BaselineResult:
    """A clustering of ``N`` points: ``labels (N,)`` int64, ``k_hat``, optional ``probabilities
    (N, K)``; ``oracle`` marks methods told the true number of clusters."""

    method: str
    labels: np.ndarray
    k_hat: int
    probabilities: np.ndarray | None = None
    oracle: bool = False
    info: dict = field(default_factory=dict)


def _points(x, name: str = "points") -> np.ndarray:
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim != 2 or arr.shape[0] < 2:
        raise ValueError(f"{name} must have shape (N, D) with N >= 2, got {arr.shape}.")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or Inf values; drop or impute them first.")
    return arr


def _subsample(n: int, size: int | None, seed: int) -> np.ndarray:
    if size is None or n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))


def kmeans_fixed(
    points, k: int, *, seed: int = 0, oracle: bool = True, fit_subsample: int | None = 50_000
) -> BaselineResult:
    """k-means (k-means++, 4 restarts) with ``k`` clusters; ``oracle`` marks ``k`` as the true K."""
    x = _points(points)
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must lie in [1, N={x.shape[0]}], got {k!r}.")
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x[_subsample(len(x), fit_subsample, seed)])
    name = "kmeans_oracle" if oracle else "kmeans"
    return BaselineResult(name, km.predict(x).astype(np.int64), k, oracle=oracle)


def kmeans_silhouette(
    points,
    k_max: int = 10,
    *,
    k_min: int = 2,
    silhouette_sample: int = 2000,
    seed: int = 0,
    fit_subsample: int | None = 50_000,
) -> BaselineResult:
    """k-means with ``K`` in ``[k_min, k_max]`` maximising the silhouette score (Euclidean, on a
    seeded subsample of ``silhouette_sample`` points). ``info["silhouette"]`` holds every score."""
    x = _points(points)
    if not 2 <= k_min <= k_max < x.shape[0]:
        raise ValueError(f"need 2 <= k_min <= k_max < N={x.shape[0]}, got k_min={k_min}, k_max={k_max}.")
    fit_idx = _subsample(len(x), fit_subsample, seed)
    sil_idx = _subsample(len(x), silhouette_sample, seed + 1)
    scores, models = {}, {}
    for k in range(k_min, k_max + 1):
        models[k] = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x[fit_idx])
        lab = models[k].predict(x[sil_idx])
        scores[k] = float(silhouette_score(x[sil_idx], lab)) if len(np.unique(lab)) > 1 else -1.0
    best = max(scores, key=scores.get)
    labels = models[best].predict(x).astype(np.int64)
    return BaselineResult("kmeans_silhouette", labels, best, info={"silhouette": scores})


def nmf_factorization(
    raw_points,
    k: int = DFF_DEFAULT_K,
    *,
    seed: int = 0,
    oracle: bool = False,
    max_iter: int = 500,
    fit_subsample: int | None = 50_000,
) -> BaselineResult:
    """Deep Feature Factorization: NMF of the raw non-negative activations ``(N, C)`` into ``k``
    factors; each point is assigned to its largest loading. ``probabilities``: loadings normalised
    to sum to one (a soft share, not a calibrated probability)."""
    a = _points(raw_points, "raw_points")
    if (a < 0).any():
        raise ValueError(
            f"NMF needs non-negative activations (post-ReLU, before standardisation/PCA); min is {a.min():.3g}."
        )
    if not 1 <= k <= a.shape[0]:
        raise ValueError(f"k must lie in [1, N={a.shape[0]}], got {k!r}.")
    init = "nndsvda" if k <= min(a.shape) else "random"  # SVD-based start needs k <= channels
    nmf = NMF(n_components=k, init=init, max_iter=max_iter, random_state=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        nmf.fit(a[_subsample(len(a), fit_subsample, seed)])
        loadings = nmf.transform(a)  # (N, k)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    share = loadings / np.maximum(loadings.sum(1, keepdims=True), 1e-12)
    name = "dff_nmf_oracle" if oracle else "dff_nmf"
    info = {"converged": converged, "n_iter": int(nmf.n_iter_)}
    return BaselineResult(name, loadings.argmax(1).astype(np.int64), k, share, oracle, info)


def bayesian_gmm(
    points,
    truncation: int = 30,
    *,
    covariance: str = "full",
    concentration: float | None = None,
    active_threshold: float = 0.01,
    seed: int = 0,
    max_iter: int = 500,
    fit_subsample: int | None = 50_000,
) -> BaselineResult:
    """scikit-learn's DP Gaussian mixture (``weight_concentration_prior_type="dirichlet_process"``,
    k-means initialisation); ``k_hat`` counts components with weight above ``active_threshold``."""
    x = _points(points)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported as info["converged"]
        bgmm = BayesianGaussianMixture(
            n_components=min(truncation, len(x)),
            covariance_type=covariance,
            weight_concentration_prior_type="dirichlet_process",
            weight_concentration_prior=concentration,
            max_iter=max_iter,
            random_state=seed,
        ).fit(x[_subsample(len(x), fit_subsample, seed)])
    order = np.argsort(-bgmm.weights_)  # canonical order: largest weight first
    proba = bgmm.predict_proba(x)[:, order]  # (N, K)
    k_hat = int((bgmm.weights_ > active_threshold).sum())
    info = {"converged": bool(bgmm.converged_), "n_iter": int(bgmm.n_iter_)}
    return BaselineResult("bgmm_dp", proba.argmax(1).astype(np.int64), k_hat, proba, info=info)


def _converged(fit, name: str) -> bool:
    fit = fit[name] if isinstance(fit, dict) and name in fit else fit
    return bool(getattr(fit, "converged_", True))


def _entropy(p: np.ndarray) -> np.ndarray:
    return -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(1)


def compare_methods(
    acts: LayerActivations,
    masks,
    fit=None,
    *,
    raw_points=None,
    true_k: int | None = None,
    methods: tuple[str, ...] | None = None,
    k_max: int = 10,
    truncation: int = 30,
    num_draws: int = 32,
    resolution: str = "input",
    seed: int = 0,
    fit_subsample: int | None = 50_000,
) -> list[dict]:
    """Score the DPGMM and the baselines on the same positions of one layer.

    ``acts``: the layer's points (after any standardisation/PCA) with geometry; ``masks``: ``(I, H, W)``
    labels or an ``ImageSet``; ``fit``: the layer's fitted ``DPGMM``/``MixturePosterior`` (or a
    ``{layer: fit}`` dict; needed for ``"dpgmm"``); ``raw_points``: ``(N, C)`` raw non-negative
    activations for the NMF methods (default: ``acts.points`` when untransformed and non-negative;
    otherwise NMF is left out unless asked for). ``true_k``: the oracle's K (default: distinct mask
    labels present). Returns one metrics dict per method (``layer``, ``method``, ``oracle``,
    ``seconds`` added), ready for :func:`evaluation_table`.
    """
    m = _masks(masks, acts.geometry, acts.num_images)
    true_k = int(torch.unique(m[m >= 0]).numel()) if true_k is None else int(true_k)
    if raw_points is None and acts.transform is None and bool((acts.tensor() >= 0).all()):
        raw_points = acts.tensor()
    if methods is None:
        methods = tuple(x for x in METHODS if (x != "dpgmm" or fit is not None))
        methods = tuple(x for x in methods if raw_points is not None or not x.startswith("dff"))
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {METHODS}.")
    if "dpgmm" in methods and fit is None:
        raise ValueError("method 'dpgmm' needs the layer's fit (a fitted DPGMM or MixturePosterior).")
    if any(x.startswith("dff") for x in methods) and raw_points is None:
        raise ValueError(
            "the NMF (DFF) methods need raw_points: the layer's non-negative post-ReLU activations."
        )
    x = acts.tensor().numpy()
    rows = []
    for method in methods:
        start = time.perf_counter()
        if method == "dpgmm":
            maps = layer_maps(fit, acts, num_draws=num_draws, seed=seed)
            row = evaluate_layer(maps, m, resolution=resolution)
            row |= {"oracle": False, "converged": _converged(fit, acts.name)}
        else:
            if method == "kmeans_silhouette":
                res = kmeans_silhouette(x, k_max, seed=seed, fit_subsample=fit_subsample)
            elif method == "kmeans_oracle":
                res = kmeans_fixed(x, true_k, seed=seed, fit_subsample=fit_subsample)
            elif method == "dff_nmf":
                res = nmf_factorization(raw_points, DFF_DEFAULT_K, seed=seed, fit_subsample=fit_subsample)
            elif method == "dff_nmf_oracle":
                res = nmf_factorization(
                    raw_points, true_k, seed=seed, oracle=True, fit_subsample=fit_subsample
                )
            else:
                res = bayesian_gmm(x, truncation, seed=seed, fit_subsample=fit_subsample)
            has_p = res.probabilities is not None and method == "bgmm_dp"  # NMF shares are not probabilities
            row = evaluate_point_labels(
                acts,
                res.labels,
                m,
                entropy=_entropy(res.probabilities) if has_p else None,
                confidence=res.probabilities.max(1) if has_p else None,
                k_hat=res.k_hat,
                resolution=resolution,
            ) | {"oracle": res.oracle, "converged": res.info.get("converged", True)}
        rows.append(row | {"method": method, "seconds": time.perf_counter() - start})
    return rows
