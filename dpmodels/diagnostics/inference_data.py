"""``to_inference_data``: draws from fitted variational posteriors as an ArviZ ``InferenceData``.

Several fits of the same data (independent restarts, different seeds) are the chains. Their
component labels are arbitrary, so each chain is relabelled to match chain 0 (Hungarian matching
on the posterior component means) before component-wise summaries; the label-invariant
quantities (``sorted_weights``, ``weight_entropy``, ``n_active``) need no matching.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .._validation import NotFittedError, as_points
from ..estimator import DPGMM
from ..models.dpgmm import ModelSpec
from ..posterior import MixturePosterior
from ._arviz import az
from .build import build_inference_data
from .draws import match_components, permute_components

__all__ = ["to_inference_data", "chain_settings", "estimate_bytes"]

# chain settings that may differ between chains; every other one must agree
_PER_CHAIN = ("engine", "seed", "elbo", "active_threshold")


def _as_chain(fit, i: int) -> tuple[MixturePosterior, dict]:
    """The ``B = 1`` posterior of one chain and its settings (engine, seed, ELBO history if known)."""
    if isinstance(fit, DPGMM):
        if not hasattr(fit, "posterior_"):
            raise NotFittedError(f"fits[{i}] is an unfitted DPGMM; call fit(X) on it first.")
        post, extra = fit.posterior_, {"engine": fit.engine, "seed": fit.seed, "elbo": fit.elbo_history_}
    elif isinstance(fit, MixturePosterior):
        if fit.batch_size != 1:
            raise ValueError(
                f"fits[{i}] is a MixturePosterior of {fit.batch_size} fits; pass one per chain "
                "(posterior.select(b)) or a fitted DPGMM."
            )
        post, extra = fit, {"engine": "unknown", "seed": -1, "elbo": None}
    else:
        raise TypeError(f"fits[{i}] must be a fitted DPGMM or a MixturePosterior, got {type(fit).__name__}.")
    return post, {**chain_settings(post), **extra}


def _float64(post: MixturePosterior) -> MixturePosterior:
    """The same posterior with float64 parameters, so that draws of nearly singular precisions
    (components that explain no data have ``dof`` close to ``D``) stay positive definite."""
    spec = ModelSpec(post.spec.prior, post.spec.base.to(dtype=torch.float64), post.spec.truncation)
    params = post.params.map(lambda t: t.double())
    out = MixturePosterior(params, spec, post._counts.double(), post.num_points, post.active_threshold)
    out.order = post.order  # keep the fit's canonical labels exactly
    return out


def chain_settings(post: MixturePosterior) -> dict:
    """The model settings of a posterior that chains must share, plus its data shape."""
    prior = post.spec.prior
    out = {
        "prior": prior.kind,
        **prior.settings(),  # concentration, discount, learn_concentration, ... and the prior's own
        "truncation": int(post.truncation),
        "covariance": post.covariance_type,
        "num_points": int(post.num_points),
        "num_features": int(post.params.num_features),
        "active_threshold": float(post.active_threshold),
    }
    if post.covariance_type == "lowrank":  # the factors per component and their loadings' prior
        out["rank"] = int(post.params.loadings.shape[-1])
        out["loading_precision"] = float(post.spec.base.loading_precision)
    return out


def _check_same(posts: list[MixturePosterior], settings: list[dict]) -> None:
    ref = settings[0]
    for i, s in enumerate(settings[1:], 1):
        diff = {k: (ref[k], s.get(k)) for k in ref if k not in _PER_CHAIN and ref[k] != s.get(k)}
        if diff:
            raise ValueError(
                f"chain {i} differs from chain 0 in {diff} (chain 0 vs chain {i}); chains must be fits "
                "of the same model to the same data: refit with identical settings, varying only seed."
            )
        b0, bi = posts[0].spec.base, posts[i].spec.base
        if not (
            torch.allclose(b0.mean, bi.mean, rtol=1e-4, atol=1e-6) and torch.allclose(b0.scale, bi.scale)
        ):
            raise ValueError(
                f"chain {i} was fitted to different data than chain 0 (the data means or covariances "
                "of their base measures differ); fit every chain to the same X."
            )


def estimate_bytes(
    C: int, S: int, K: int, D: int, n: int, covariance: str, predictive: bool, rank: int = 0
) -> int:
    """Bytes (float64) of the draws, log-likelihood and predictive draws of ``C x S`` draws.
    ``rank``: the factors of ``"lowrank"`` components (their draws hold noise precisions and
    variances, loadings ``(K, D, r)`` and the marginal variances the InferenceData adds)."""
    if covariance == "lowrank":
        if rank < 1:
            raise ValueError(f"covariance='lowrank' needs its rank (>= 1) to size the draws, got {rank!r}.")
        comp = K * D * (3 + rank)  # noise precisions and variances, marginal variances, loadings
    else:
        comp = 2 * (K * D * D if covariance == "full" else K * D)  # precisions and covariances
    per_draw = 3 * K + K * D + comp + 4 + n + (n * D if predictive else 0)
    return 8 * C * S * per_draw


def _observed(X, heldout, settings: dict, post: MixturePosterior, max_points: int | None, seed: int):
    """Points scored in ``log_likelihood``, their row numbers and which data they are."""
    D = settings["num_features"]
    if X is not None:
        x = as_points(X, dtype=torch.float64)
        if x.shape != (settings["num_points"], D):
            raise ValueError(
                f"X has shape {tuple(x.shape)} but the fits saw ({settings['num_points']}, {D}); "
                "pass the data the chains were fitted to (held-out points go in heldout=)."
            )
        tol = 1e-3 * float(np.sqrt(np.diag(_scale_matrix(post)).max())) + 1e-6
        if (x.mean(0) - post.spec.base.mean[0].double()).abs().max() > tol:
            raise ValueError("X does not match the data the fits saw (its mean differs); pass the fitted X.")
    data, which = (heldout, "heldout") if heldout is not None else (X, "fitted")
    if data is None:
        return None, None, "none"
    pts = as_points(data, name=which, dtype=torch.float64, min_points=1).numpy()
    if pts.shape[1] != D:
        raise ValueError(f"{which} points have {pts.shape[1]} features, the fits {D}; pass matching columns.")
    index = np.arange(pts.shape[0])
    if max_points is not None and pts.shape[0] > max_points:
        index = np.sort(np.random.default_rng(seed).choice(pts.shape[0], max_points, replace=False))
    return pts[index], index, which


def to_inference_data(
    fits: DPGMM | MixturePosterior | Sequence[DPGMM | MixturePosterior],
    X=None,
    *,
    num_draws: int = 200,
    heldout=None,
    seed: int = 0,
    posterior_predictive: bool = False,
    max_points: int | None = 5000,
    max_bytes: int = 2**30,
) -> az.InferenceData:
    """Draws of the variational posterior of one or several fits (chains) as ``InferenceData``.

    ``X (N, D)`` is the fitted data; ``log_likelihood`` scores it, or ``heldout (M, D)`` when given
    (attribute ``log_likelihood_data``), at most ``max_points`` rows drawn with ``seed``. Chain
    ``c`` draws ``num_draws`` times with seed ``seed + c``. ``n_active`` counts components whose
    drawn weight exceeds the fit's ``active_threshold``. Raises ``ValueError`` when the draws
    would need more than ``max_bytes``. Low-rank fits (``covariance="lowrank"``) give ``loadings``
    ``(component, feature, factor)``, ``noise_variances`` and the marginal ``variances``; their
    loadings are identified only up to a rotation of the factors, so compare chains on the
    ``variances`` (or ``means``, ``weights``), not on the loadings.
    """
    chains = list(fits) if isinstance(fits, (list, tuple)) else [fits]
    if not chains:
        raise ValueError("fits is empty; pass one fitted DPGMM or a list of fits of the same data.")
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 4:
        raise ValueError(f"num_draws must be an integer >= 4, got {num_draws!r}; try 200.")
    pairs = [_as_chain(f, i) for i, f in enumerate(chains)]
    posts, settings = [p for p, _ in pairs], [s for _, s in pairs]
    _check_same(posts, settings)
    s0 = settings[0]
    C, K, D, cov = len(posts), s0["truncation"], s0["num_features"], s0["covariance"]
    n_score = 0 if X is None and heldout is None else len(heldout if heldout is not None else X)
    n_score = min(n_score, max_points) if max_points is not None else n_score
    need = estimate_bytes(C, num_draws, K, D, n_score, cov, posterior_predictive, s0.get("rank", 0))
    if need > max_bytes:
        raise ValueError(
            f"the requested draws need about {need / 2**20:.1f} MiB but max_bytes is {max_bytes / 2**20:.1f} "
            f"MiB ({C} chains x {num_draws} draws, K={K}, D={D}, {n_score} scored points); reduce "
            "num_draws or max_points, or raise max_bytes."
        )
    observed, index, which = _observed(X, heldout, s0, posts[0], max_points, seed)
    if posterior_predictive and observed is None:
        raise ValueError("posterior_predictive=True needs X (or heldout) to size and compare the draws.")
    per_chain = []
    with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
        for c, post in enumerate(posts):
            d = _float64(post).sample(num_draws, seed=seed + c)
            per_chain.append({k: v[:, 0].double().cpu().numpy() for k, v in d.items()})  # (S, ...)
    draws = {k: np.stack([pc[k] for pc in per_chain]) for k in per_chain[0]}  # (C, S, ...)
    ref_m, ref_w = posts[0].means[0].double().cpu().numpy(), posts[0].weights[0].double().cpu().numpy()
    scale = np.sqrt(np.diag(_scale_matrix(posts[0])))
    for c in range(1, C):
        perm = match_components(
            ref_m,
            ref_w,
            posts[c].means[0].double().cpu().numpy(),
            posts[c].weights[0].double().cpu().numpy(),
            scale,
        )
        for k in ("weights", "means", "precisions", "covariances", "loadings"):
            if k not in draws:
                continue
            draws[k][c] = permute_components(draws[k][c], np.broadcast_to(perm, draws[k][c].shape[:2]), 1)
    draws.pop("log_weights")
    elbo = None
    if all(s["elbo"] is not None for s in settings):
        T = max(len(s["elbo"]) for s in settings)
        elbo = np.full((C, T), np.nan)
        for c, s in enumerate(settings):
            elbo[c, : len(s["elbo"])] = s["elbo"]
    attrs = {k: v for k, v in s0.items() if k not in ("engine", "seed", "elbo", "num_features")}
    attrs.update(
        engine=s0["engine"],
        seed=seed,
        chain_seeds=",".join(str(s["seed"]) for s in settings),
        source="variational",
        log_likelihood_data=which,
        num_scored_points=int(0 if observed is None else observed.shape[0]),
    )
    return build_inference_data(
        draws,
        cov,
        attrs,
        active_threshold=s0["active_threshold"],
        observed=observed,
        point_index=index,
        posterior_predictive=posterior_predictive,
        elbo=elbo,
        rng=np.random.default_rng(seed),
    )


def _scale_matrix(post: MixturePosterior) -> np.ndarray:
    """The base measure's ``Psi`` as a ``(D, D)`` matrix (diagonal for ``"diag"``)."""
    psi = post.spec.base.scale[0].double().cpu().numpy()
    return psi if psi.ndim == 2 else np.diag(psi)
