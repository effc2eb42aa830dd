"""Pareto-smoothed importance sampling check of a variational fit (Yao et al. 2018).

Draw ``theta_s ~ q``, weigh it by ``log w_s = log p(theta_s, X) - log q(theta_s)`` and fit a
generalised Pareto distribution to the largest weights. Its shape ``k_hat`` says how far ``q`` is
from the posterior in the sense that matters for importance sampling: ``k_hat < 0.5`` good,
``0.5-0.7`` usable, ``> 0.7`` unreliable. Both densities come from Pyro traces: ``q`` from
:func:`~dpmodels.models.guide.dpgmm_guide`, ``p`` from :func:`~dpmodels.models.dpgmm.dpgmm_model`
conditioned on the draw with the assignments enumerated and summed out, so the model stays the
single source of truth. The ``S`` draws run as the model's ``fits`` batch, in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro.poutine as poutine
import torch
from torch import Tensor

from .._validation import NotFittedError, as_points
from ..estimator import DPGMM
from ..models.base_measure import BaseMeasure
from ..models.dpgmm import ModelSpec, dpgmm_model
from ..models.guide import dpgmm_guide
from ..posterior import MixturePosterior
from ._arviz import az
from .draws import refuse_lowrank, single_threaded

__all__ = ["ParetoResult", "vi_pareto_k", "log_importance_weights", "explain_pareto_k"]

_GLOBAL_SITES = ("concentration", "sticks", "weights", "precision", "mean")


@dataclass
class ParetoResult:
    """``k_hat``, its reading in words, the log importance weights ``(S,)`` and their ESS."""

    k_hat: float
    message: str
    log_weights: np.ndarray
    ess: float


def explain_pareto_k(k_hat: float) -> str:
    """The standard reading of a Pareto ``k_hat`` for a variational approximation."""
    if not np.isfinite(k_hat):
        return "k_hat is not finite: the importance weights are degenerate; the approximation is unusable."
    if k_hat < 0.5:
        return f"k_hat = {k_hat:.2f} < 0.5: good; q is close to the posterior (importance sampling converges fast)."
    if k_hat <= 0.7:
        return f"k_hat = {k_hat:.2f} in [0.5, 0.7]: ok; q is usable, importance sampling converges slowly."
    return (
        f"k_hat = {k_hat:.2f} > 0.7: the variational approximation is unreliable; posterior expectations "
        "from q may be badly off (typical for large N with mean-field VI, or a misspecified model)."
    )


def _expand(post: MixturePosterior, S: int) -> tuple[ModelSpec, object]:
    """The spec and variational parameters of a ``B = 1`` fit repeated ``S`` times (float64)."""
    f64 = torch.float64
    base = post.spec.base

    def rep(t: Tensor) -> Tensor:
        return t.to(dtype=f64, device="cpu").expand((S,) + t.shape[1:]).contiguous()

    base_s = BaseMeasure(
        base.covariance, *(rep(t) for t in (base.mean, base.mean_precision, base.dof, base.scale))
    )
    return ModelSpec(post.spec.prior, base_s, post.spec.truncation), post.params.map(rep)


def log_importance_weights(post: MixturePosterior, x: Tensor, num_draws: int, chunk: int = 128) -> np.ndarray:
    """``log p(theta_s, X) - log q(theta_s)`` ``(S,)`` for ``S = num_draws`` draws from ``q``.

    ``x (N, D)`` float64. Draws are made ``chunk`` at a time (global torch RNG; seed it first).
    """
    out = []
    for start in range(0, num_draws, chunk):
        S = min(chunk, num_draws - start)
        spec, params = _expand(post, S)
        data = x.unsqueeze(0).expand(S, -1, -1)  # (S, N, D) view
        guide_tr = poutine.trace(dpgmm_guide).get_trace(data[:, :1], spec, params)
        guide_tr.compute_log_prob()
        values = {n: s["value"] for n, s in guide_tr.nodes.items() if n in _GLOBAL_SITES}
        log_q = sum(_per_fit(guide_tr.nodes[n]["log_prob"], S) for n in values)
        model = poutine.enum(poutine.condition(dpgmm_model, data=values), first_available_dim=-3)
        model_tr = poutine.trace(model).get_trace(data, spec)
        model_tr.compute_log_prob()
        log_prior = sum(_per_fit(model_tr.nodes[n]["log_prob"], S) for n in values)
        joint = model_tr.nodes["z"]["log_prob"] + model_tr.nodes["x"]["log_prob"]  # (K, 1, S, N)
        log_lik = torch.logsumexp(joint, dim=0).reshape(S, -1).sum(-1)  # (S,) assignments summed out
        out.append((log_prior + log_lik - log_q).detach())
    return torch.cat(out).numpy()


def _per_fit(log_prob: Tensor, S: int) -> Tensor:
    """Sum a site's log density over everything but the ``fits`` dimension: ``(S, ...) -> (S,)``."""
    return log_prob.reshape(S, -1).sum(-1)


def vi_pareto_k(
    fit: DPGMM | MixturePosterior, X, num_draws: int = 1000, seed: int = 0, chunk: int = 128
) -> ParetoResult:
    """PSIS diagnostic ``k_hat`` of a fitted variational posterior for the data ``X (N, D)`` it was
    fitted to (Yao, Vehtari, Simpson, Gelman 2018). Works for full and diagonal covariance (low-rank
    fits raise ``ValueError``: the Pyro model does not hold their density), every
    weight prior, and a learned concentration. Leaves the caller's global torch RNG untouched."""
    if isinstance(fit, DPGMM):
        if not hasattr(fit, "posterior_"):
            raise NotFittedError("this DPGMM is not fitted yet; call fit(X) before vi_pareto_k.")
        post = fit.posterior_
    elif isinstance(fit, MixturePosterior):
        if fit.batch_size != 1:
            raise ValueError(f"pass a posterior of one fit (B = 1), got B = {fit.batch_size}; use select(b).")
        post = fit
    else:
        raise TypeError(f"fit must be a fitted DPGMM or a MixturePosterior, got {type(fit).__name__}.")
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 20:
        raise ValueError(
            f"num_draws must be an integer >= 20 to fit a Pareto tail, got {num_draws!r}; try 1000."
        )
    refuse_lowrank(
        post.covariance_type,
        "vi_pareto_k",
        "it scores draws with the Pyro model and guide of the full and diagonal components, and the "
        "low-rank components' factor-analyser density and q are not written there",
    )
    x = as_points(X, dtype=torch.float64)
    if x.shape[1] != post.params.num_features:
        raise ValueError(
            f"X has {x.shape[1]} features, the fit {post.params.num_features}; pass the fitted X."
        )
    with torch.random.fork_rng(devices=[]), torch.no_grad(), single_threaded():
        torch.manual_seed(seed)
        log_w = log_importance_weights(post, x, num_draws, chunk)
    smoothed, k_hat = az.psislw(log_w.copy())
    w = np.exp(smoothed - smoothed.max())
    ess = float(w.sum() ** 2 / (w**2).sum())
    k = float(np.asarray(k_hat))
    return ParetoResult(k_hat=k, message=explain_pareto_k(k), log_weights=log_w, ess=ess)
