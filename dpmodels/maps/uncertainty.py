"""Per-point cluster, uncertainty and novelty from a fitted mixture posterior, chunk by chunk.

For each point ``x``:

* ``labels``: the most probable cluster under the mean-field responsibilities (canonical index,
  cluster 0 = largest weight); ``confidence``: that responsibility;
* ``entropy``: entropy of the mean-field responsibilities ``q(z | x)`` (nats);
* ``epistemic``: mutual information between the assignment and the mixture parameters,
  ``H[E_theta p(z | x, theta)] - E_theta H[p(z | x, theta)]``, estimated from ``S`` posterior draws
  ``theta_s ~ q`` with ``p(z = k | x, theta_s) ∝ w_k N(x; mu_k, Lambda_k^-1)`` in float64 (low-rank
  components: ``Lambda_k^-1 = W_k W_k^T + diag(1 / lambda_k)`` by the Woodbury identity);
  ``aleatoric`` is the second term (expected entropy given the parameters);
* ``novelty``: ``-log p(x | data)``, the negative posterior predictive log density (nats; per
  feature when ``per_dimension``).
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..posterior import MixturePosterior
from .lowrank import woodbury_factors
from .registry import MAPS
from .registry import entropy as _entropy

__all__ = ["UNCERTAINTY_KINDS", "MapChunk", "n_active_draws", "point_uncertainty"]

UNCERTAINTY_KINDS = tuple(MAPS)  # the built-in kinds (dpmodels.maps.registry), in order


# A component whose weight is below this in every draw is left out of the per-draw responsibilities,
# subject to the per-point check of ``_mutual_information`` (which makes the result exact to float64).
NEGLIGIBLE_WEIGHT = 1e-12
# Dropped components may carry at most this share of a point's density in any draw: exp(-41.6) =
# 2**-60. Then every kept responsibility changes by a relative factor in [1 - 2**-60, 1], every
# dropped one is <= 2**-60, and each entropy by at most 2**-60 * (61 ln 2 + ln K + 1) < 1e-16 nats:
# below float64 rounding of O(1) entropies. Points that fail the check are recomputed exactly.
_LOG_DROP_BOUND = -60.0 * math.log(2.0)


def _draw_terms(posterior: MixturePosterior, num_draws: int, seed: int) -> dict[str, Tensor]:
    """Per-draw float64 coefficients of ``log w_k + log N(x; mu_k, Sigma_k)`` for ``B = 1``, as a
    linear function of the quadratic features of ``x`` (see ``_features``), plus for low-rank
    components the Woodbury correction ``+ 0.5 |A x - A mu|^2`` (:mod:`dpmodels.maps.lowrank`).

    Returns ``coef (F, S, K)``, ``log_peak (S, K)``: ``log w_k + max_x log N(x; ...)``, an upper bound
    of each component's log joint at any point, ``keep (K,)``: components not negligible in every
    draw, and for low-rank components ``woodbury (D, S, K, r)`` (``A^T``) and ``shift (S, K, r)``
    (``A mu``)."""
    with torch.random.fork_rng(devices=[]):  # MixturePosterior.sample reseeds the global RNG
        draws = posterior.sample(num_draws, seed=seed, dtype=torch.float64)
    f64 = torch.float64
    log_w = draws["log_weights"][:, 0].to(f64)  # (S, K)
    means = draws["means"][:, 0].to(f64)  # (S, K, D)
    S, K, D = means.shape
    out: dict[str, Tensor] = {}
    if posterior.covariance_type == "full":
        tril = draws["precision_trils"][:, 0].to(f64)  # Lambda = T T^T, exact from the Bartlett draw
        log_det = 2.0 * torch.log(tril.diagonal(dim1=-2, dim2=-1)).sum(-1)  # (S, K)
        prec = tril @ tril.transpose(-1, -2)  # (S, K, D, D)
        iu = torch.triu_indices(D, D)
        pair = torch.where(iu[0] == iu[1], 1.0, 2.0).to(f64)  # x_i x_j appears twice off the diagonal
        quad = prec[..., iu[0], iu[1]] * pair  # (S, K, D(D+1)/2)
        lin = (prec @ means.unsqueeze(-1)).squeeze(-1)  # Lambda mu  (S, K, D)
        mu_lambda_mu = (lin * means).sum(-1)  # (S, K)
    else:
        prec = draws["precisions"][:, 0].to(f64)  # noise precisions for low-rank  (S, K, D)
        log_det = torch.log(prec).sum(-1)  # (S, K)
        quad = prec  # (S, K, D)
        lin = prec * means  # (S, K, D)
        mu_lambda_mu = (lin * means).sum(-1)  # (S, K)
        if posterior.covariance_type == "lowrank":
            a, log_det = woodbury_factors(prec, draws["loadings"][:, 0].to(f64))  # (S, K, r, D), (S, K)
            out["woodbury"] = a.permute(3, 0, 1, 2).contiguous()  # A^T  (D, S, K, r)
            out["shift"] = (a @ means.unsqueeze(-1)).squeeze(-1)  # A mu  (S, K, r)
    log_peak = log_w + 0.5 * log_det - 0.5 * D * math.log(2 * math.pi)  # (S, K)
    # log joint = log_peak - 0.5 (x' Lambda x - 2 mu' Lambda x + mu' Lambda mu) [+ 0.5 |A x - A mu|^2]
    coef = torch.cat([-0.5 * quad, lin, (log_peak - 0.5 * mu_lambda_mu).unsqueeze(-1)], -1)  # (S, K, F)
    keep = (log_w > math.log(NEGLIGIBLE_WEIGHT)).any(0)  # (K,)
    return {"coef": coef.permute(2, 0, 1).contiguous(), "log_peak": log_peak, "keep": keep, **out}


def _features(x: Tensor, full: bool) -> Tensor:
    """``(n, F)`` features whose linear map gives every component's log joint: the products
    ``x_i x_j`` (``i <= j``; full) or ``x_i^2`` (diag and low-rank), then ``x`` and a 1."""
    n, D = x.shape
    Q = D * (D + 1) // 2 if full else D
    out = torch.empty(n, Q + D + 1, dtype=x.dtype, device=x.device)  # (n, F)
    if full:  # row i of the upper triangle, x_i x_j for j >= i, written in place (no index gathers)
        j = 0
        for i in range(D):
            torch.mul(x[:, i : i + 1], x[:, i:], out=out[:, j : j + D - i])
            j += D - i
    else:
        torch.mul(x, x, out=out[:, :D])
    out[:, Q : Q + D] = x
    out[:, -1] = 1.0
    return out


def _log_joint(x: Tensor, feats: Tensor, terms: dict[str, Tensor], comps: Tensor | None) -> Tensor:
    """Every draw's log joints ``(n, S, K')`` of the components ``comps`` (a boolean mask; all when
    ``None``) at the points ``x (n, D)`` with features ``feats (n, F)``."""
    coef = terms["coef"] if comps is None else terms["coef"][:, :, comps]  # (F, S, K')
    F_, S = coef.shape[:2]
    log_joint = (feats @ coef.reshape(F_, -1)).view(x.shape[0], S, -1)  # (n, S, K')
    if "woodbury" in terms:  # low rank: + 0.5 |A x - A mu|^2
        a_t, shift = terms["woodbury"], terms["shift"]  # (D, S, K, r), (S, K, r)
        if comps is not None:
            a_t, shift = a_t[:, :, comps], shift[:, comps]
        proj = (x @ a_t.reshape(a_t.shape[0], -1)).view(x.shape[0], *shift.shape)  # A x  (n, S, K', r)
        log_joint += 0.5 * (proj - shift).pow_(2).sum(-1)
    return log_joint


def _entropies(log_joint: Tensor) -> tuple[Tensor, Tensor]:
    """``(total, aleatoric)`` ``(n,)`` from per-draw log joints ``(n, S, K)`` (overwritten).

    With ``a = log_joint - max``, ``Z = sum exp(a)`` and ``p = exp(a) / Z``: ``H[p] = log Z - sum p a``
    (no ``log p``, no ``0 log 0`` case; every ``a`` is finite)."""
    a = log_joint.sub_(log_joint.amax(-1, keepdim=True))  # (n, S, K), max 0
    p = a.exp()  # unnormalised  (n, S, K)
    Z = p.sum(-1, keepdim=True)  # (n, S, 1), >= 1
    p.div_(Z)  # p(z | x, theta_s)  (n, S, K)
    aleatoric = (Z.squeeze(-1).log() - torch.einsum("nsk,nsk->ns", p, a)).mean(1)  # E_theta H[p]  (n,)
    return _entropy(p.mean(1), 1), aleatoric  # H[E_theta p]  (n,)


def _mutual_information(x: Tensor, terms: dict[str, Tensor], full: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, aleatoric, epistemic)`` entropies ``(n,)`` for a float64 chunk ``x (n, D)``.

    All ``S x K`` log joints come from one matrix product of the chunk's quadratic features (no
    ``(S, K, n, D)`` temporaries; low rank adds ``(n, S, K, r)``). Components negligible in every
    draw are left out unless, at some point, the bound on their density (``log_peak``) could exceed
    ``2**-60`` of the kept density in a draw; such points are recomputed with all components."""
    keep, log_peak = terms["keep"], terms["log_peak"]
    feats = _features(x, full)  # (n, F)
    pruned = not bool(keep.all())
    log_joint = _log_joint(x, feats, terms, keep if pruned else None)  # (n, S, K')
    redo = None
    if pruned:
        log_dropped = torch.logsumexp(log_peak[:, ~keep], -1)  # bound on the dropped log density  (S,)
        redo = (log_dropped - torch.logsumexp(log_joint, -1) > _LOG_DROP_BOUND).any(1)  # (n,)
    total, aleatoric = _entropies(log_joint)
    if redo is not None and bool(redo.any()):
        full_joint = _log_joint(x[redo], feats[redo], terms, None)  # (m, S, K)
        total[redo], aleatoric[redo] = _entropies(full_joint)
    return total, aleatoric, (total - aleatoric).clamp_min(0.0)


def _read(points, start: int, stop: int, device: torch.device) -> Tensor:
    chunk = points[start:stop]
    if not isinstance(chunk, Tensor):
        chunk = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float64))
    return chunk.to(device=device, dtype=torch.float64)


class MapChunk:
    """A chunk of ``n`` points and the posterior's quantities there, each computed once on first use
    and shared by every map kind of ``dpmodels.maps.registry`` (all float64, on the posterior's device).

    ``x`` ``(n, D)``; ``log_resp`` ``(n, K)``: mean-field log responsibilities; ``information``:
    ``{"total", "aleatoric", "epistemic"}`` ``(n,)`` entropies over the posterior draws (nats);
    ``log_predictive`` ``(n,)``: posterior predictive log density (nats); ``per_dimension``: report
    densities per feature."""

    def __init__(self, posterior: MixturePosterior, x: Tensor, draws: _Draws, per_dimension: bool = False):
        self.posterior, self.x, self.per_dimension = posterior, x, per_dimension
        self._draws = draws

    @property
    def num_features(self) -> int:
        return int(self.x.shape[1])

    @cached_property
    def log_resp(self) -> Tensor:
        return self.posterior.log_responsibilities(self.x.to(self.posterior.params.mean.dtype))[0].double()

    @cached_property
    def information(self) -> dict[str, Tensor]:
        total, aleatoric, epistemic = _mutual_information(self.x, self._draws.terms, self._draws.full)
        return {"total": total, "aleatoric": aleatoric, "epistemic": epistemic}

    @cached_property
    def log_predictive(self) -> Tensor:
        return self.posterior.log_predictive(self.x)[0].double()


class _Draws:
    """The posterior draws' coefficients (``_draw_terms``), made on first use, once per call."""

    def __init__(self, posterior: MixturePosterior, num_draws: int, seed: int):
        self.posterior, self.num_draws, self.seed = posterior, num_draws, seed
        self.full = posterior.covariance_type == "full"

    @cached_property
    def terms(self) -> dict[str, Tensor]:
        return _draw_terms(self.posterior, self.num_draws, self.seed)


def point_uncertainty(
    posterior: MixturePosterior,
    points,
    *,
    num_draws: int = 32,
    seed: int = 0,
    chunk_size: int | None = None,
    per_dimension: bool = False,
    progress: bool = False,
) -> dict[str, Tensor]:
    """Every registered map kind (``dpmodels.maps.MAPS``: labels, confidence, entropy,
    epistemic/aleatoric split, novelty, ...) of every point.

    ``posterior``: a ``MixturePosterior`` with ``B = 1``. ``points``: ``(N, D)`` tensor, array or
    memmap, read ``chunk_size`` rows at a time (default: sized so that the ``(n, S, K)`` float64
    log joints and the ``(n, D (D + 1) / 2)`` quadratic features each stay near 16 MiB, which bounds
    memory at any width). Returns ``{kind: (N,)}`` CPU tensors: ``labels`` int64, the rest float64.
    """
    if posterior.batch_size != 1:
        raise ValueError(
            f"expected a posterior of one fit (B = 1), got B = {posterior.batch_size}; "
            "pick one with posterior.select(b)."
        )
    if num_draws < 1:
        raise ValueError(f"num_draws must be >= 1, got {num_draws!r}; try 32.")
    N, D = int(points.shape[0]), int(points.shape[1])
    K = posterior.truncation
    if chunk_size is None:
        full = posterior.covariance_type == "full"
        F = D * (D + 1) // 2 + D + 1 if full else 2 * D + 1  # quadratic features per point
        r = posterior.params.loadings.shape[-1] if posterior.covariance_type == "lowrank" else 1
        # (n, S, K) log joints, (n, S, K, r) low-rank projections and (n, F) features each near 16 MiB
        chunk_size = max(16, min(2**21 // (K * num_draws * r), 2**21 // F))
    device = posterior.params.mean.device
    draws = _Draws(posterior, num_draws, seed)
    out: dict[str, list[Tensor]] = {k: [] for k in MAPS}
    starts = range(0, N, chunk_size)
    for start in tqdm(starts, desc="maps", unit="chunk", disable=not progress):
        x = _read(points, start, min(start + chunk_size, N), device)  # (n, D) float64
        chunk = MapChunk(posterior, x, draws, per_dimension)
        for kind in MAPS.values():
            out[kind.name].append(kind.compute(chunk))  # (n,)
    return {k: torch.cat(v).cpu() for k, v in out.items()}


def n_active_draws(
    posterior: MixturePosterior, num_draws: int = 200, threshold: float | None = None, seed: int = 0
) -> np.ndarray:
    """Posterior draws of the number of clusters ``(S,)``: components whose drawn weight exceeds
    ``threshold`` (default: the posterior's ``active_threshold``), for a ``B = 1`` posterior."""
    if posterior.batch_size != 1:
        raise ValueError(f"expected a posterior of one fit (B = 1), got B = {posterior.batch_size}.")
    threshold = posterior.active_threshold if threshold is None else threshold
    with torch.random.fork_rng(devices=[]):
        weights = posterior.sample(num_draws, seed=seed)["weights"][:, 0]  # (S, K)
    return (weights > threshold).sum(-1).cpu().numpy()
