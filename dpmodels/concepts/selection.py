"""How many concepts: the elbow of the entropy curve, and its spread over posterior draws.

Along a hierarchy, merging components that share points lowers the assignment entropy ``ENT(k)``
a lot; once only well separated concepts are left, further merges lower it little. Following
Baudry et al. (2010), the number of concepts is the changepoint of ``ENT`` as a function of ``k``:
the ``c`` whose two-segment piecewise-linear least-squares fit (``k = 1..c`` and ``k = c..K̂``) has
the smallest residual sum of squares. Its uncertainty: for each of ``S`` posterior draws
``theta_s ~ q``, the responsibilities ``p(z | x, theta_s) ∝ w_k N(x; mu_k, Sigma_k)`` of a
seeded subsample are merged along the same tree, giving a curve and an elbow per draw; the
interval is the central 90 % of those elbows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..maps.lowrank import woodbury_factors
from ..posterior import MixturePosterior
from .hierarchy import CRITERIA, ConceptHierarchy, _xlogx, build_hierarchy

__all__ = [
    "ConceptSelection",
    "concept_draws",
    "draw_responsibilities",
    "elbow",
    "entropy_curve",
    "select_concepts",
]


def elbow(curve) -> int:
    """Changepoint ``c`` (a number of concepts) of ``curve[k - 1] = ENT(k)``, ``k = 1..K̂``: the
    two-segment piecewise-linear least-squares fit (``k <= c`` and ``k >= c``) with the smallest
    residual, ``c`` in ``1..K̂`` (``c = K̂``: one line, no elbow, keep every component); ties go to
    the larger ``c`` (merge no more than the curve asks for)."""
    y = np.asarray(curve, dtype=np.float64)
    K = len(y)
    if K <= 2:
        return max(K, 1)
    y = y / max(float(np.abs(y).max()), 1e-3)  # scale-free above 1e-3 nats per point; below: flat
    k = np.arange(1, K + 1, dtype=np.float64)

    def sse(sl: slice) -> float:
        if len(y[sl]) <= 2:
            return 0.0
        coef = np.polyfit(k[sl], y[sl], 1)
        return float(((np.polyval(coef, k[sl]) - y[sl]) ** 2).sum())

    costs = {c: sse(slice(0, c)) + sse(slice(c - 1, K)) for c in range(1, K + 1)}
    return min(costs, key=lambda c: (round(costs[c], 12), -c))


def entropy_curve(hierarchy: ConceptHierarchy, responsibilities) -> np.ndarray:
    """``ENT(k)`` (nats per point) of ``responsibilities (N, K̂)`` merged along ``hierarchy``."""
    r = np.asarray(responsibilities, dtype=np.float64)
    r = r / r.sum(1, keepdims=True)
    return np.array(
        [-_xlogx(hierarchy.merge(r, k)).sum() / len(r) for k in range(1, hierarchy.num_components + 1)]
    )


def draw_responsibilities(
    posterior: MixturePosterior, x, components, num_draws: int, seed: int = 0
) -> np.ndarray:
    """``(S, N, K̂)`` responsibilities ``p(z | x, theta_s)`` of points ``x (N, D)`` over
    ``components`` (canonical indices, renormalised among them) under ``S`` posterior draws."""
    with torch.random.fork_rng(devices=[]):  # sample() reseeds the global RNG
        d = posterior.sample(num_draws, seed=seed, dtype=torch.float64)
    comps = torch.as_tensor(np.asarray(components), dtype=torch.long)
    xs = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    D = xs.shape[1]
    out = []
    for s in range(num_draws):
        log_w = d["log_weights"][s, 0, comps].double()  # (K̂,)
        mu = d["means"][s, 0, comps].double()  # (K̂, D)
        diff = xs.unsqueeze(0) - mu.unsqueeze(1)  # (K̂, N, D)
        if posterior.covariance_type == "full":
            tril = d["precision_trils"][s, 0, comps].double()  # Lambda = T T^T  (K̂, D, D)
            maha = ((diff @ tril) ** 2).sum(-1)  # (K̂, N)
            log_det = 2.0 * torch.log(torch.diagonal(tril, dim1=-2, dim2=-1)).sum(-1)
        elif posterior.covariance_type == "lowrank":  # W W^T + diag(noise), by the Woodbury identity
            noise_prec = d["precisions"][s, 0, comps].double()  # (K̂, D)
            a, log_det = woodbury_factors(noise_prec, d["loadings"][s, 0, comps].double())  # (K̂, r, D)
            maha = (diff**2 * noise_prec.unsqueeze(1)).sum(-1) - ((diff @ a.transpose(-1, -2)) ** 2).sum(-1)
        else:
            prec = d["precisions"][s, 0, comps].double()  # (K̂, D)
            maha = (diff**2 * prec.unsqueeze(1)).sum(-1)
            log_det = torch.log(prec).sum(-1)
        log_joint = log_w[:, None] + 0.5 * log_det[:, None] - 0.5 * maha - 0.5 * D * math.log(2 * math.pi)
        out.append(torch.softmax(log_joint.T, -1))  # (N, K̂)
    return torch.stack(out).numpy()


def _kept_components(posterior: MixturePosterior) -> np.ndarray:
    """Canonical indices of the components the concepts are built from (the active ones)."""
    comps = torch.nonzero(posterior.active[0]).flatten().cpu().numpy()
    return comps if len(comps) else np.array([0])


def concept_draws(
    posterior: MixturePosterior, points, *, num_draws: int = 32, draw_points: int = 4000, seed: int = 0
) -> np.ndarray:
    """``(S, N_sub, K̂)`` responsibilities of the seeded subsample of ``draw_points`` of ``points
    (N, D)`` under ``S = num_draws`` posterior draws, over the kept components: what
    :func:`select_concepts` computes for the elbow's interval."""
    x = torch.as_tensor(np.asarray(points), dtype=posterior.params.mean.dtype)
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(len(x), size=min(draw_points, len(x)), replace=False))
    return draw_responsibilities(
        posterior, x[sub].double().numpy(), _kept_components(posterior), num_draws, seed
    )


@dataclass
class ConceptSelection:
    """A layer's concepts: the ``hierarchy``, the chosen number ``k`` (elbow of the mean-field
    curve), the per-draw elbows ``k_draws (S,)`` and their central 90 % ``k_interval``."""

    hierarchy: ConceptHierarchy
    k: int
    k_draws: np.ndarray
    k_interval: tuple[float, float]


def select_concepts(
    posterior: MixturePosterior,
    points,
    *,
    criterion: str = "bhattacharyya",
    num_concepts: int | None = None,
    num_draws: int = 32,
    draw_points: int = 4000,
    seed: int = 0,
    draws: np.ndarray | None = None,
) -> ConceptSelection:
    """Build the hierarchy over the active components of a ``B = 1`` ``posterior`` from ``points
    (N, D)`` (e.g. the fitted positions) and choose the number of concepts.

    ``num_concepts``: a fixed number instead of the elbow (at most ``K̂``); the draws still give
    the elbow's interval. ``draw_points``: the seeded subsample used for the per-draw curves.
    ``draws``: those curves' responsibilities ``(S, N_sub, K̂)`` from :func:`concept_draws` with the
    same arguments, to share them between criteria (they do not depend on the criterion)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}.")
    if posterior.batch_size != 1:
        raise ValueError(f"expected a posterior of one fit (B = 1), got B = {posterior.batch_size}.")
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws!r}.")
    x = torch.as_tensor(np.asarray(points), dtype=posterior.params.mean.dtype)
    comps = _kept_components(posterior)
    resp = posterior.responsibilities(x)[0][:, comps].double().cpu().numpy()  # (N, K̂)
    resp = np.maximum(resp, 0.0)
    resp[resp.sum(1) <= 0] = 1.0  # a point no kept component explains: spread evenly
    h = build_hierarchy(
        resp,
        criterion=criterion,
        components=comps,
        weights=posterior.weights[0, comps].double().cpu().numpy(),
        means=posterior.means[0, comps].double().cpu().numpy(),
        covariances=posterior.covariances[0, comps].double().cpu().numpy(),
    )
    if num_concepts is not None and not 1 <= int(num_concepts) <= h.num_components:
        raise ValueError(
            f"num_concepts must lie in [1, K̂={h.num_components}] (the layer's active components), "
            f"got {num_concepts!r}."
        )
    k = elbow(h.entropy_curve) if num_concepts is None else int(num_concepts)
    if draws is None:
        draws = concept_draws(posterior, points, num_draws=num_draws, draw_points=draw_points, seed=seed)
    k_draws = np.array([elbow(entropy_curve(h, r)) for r in draws])
    interval = (float(np.quantile(k_draws, 0.05)), float(np.quantile(k_draws, 0.95)))
    return ConceptSelection(h, k, k_draws, interval)
