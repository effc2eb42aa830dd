"""Per-point cluster, uncertainty and novelty from a fitted mixture posterior, chunk by chunk.

For each point ``x``:

* ``labels``: the most probable cluster under the mean-field responsibilities (canonical index,
  cluster 0 = largest weight); ``confidence``: that responsibility;
* ``entropy``: entropy of the mean-field responsibilities ``q(z | x)`` (nats);
* ``epistemic``: mutual information between the assignment and the mixture parameters,
  ``H[E_theta p(z | x, theta)] - E_theta H[p(z | x, theta)]``, estimated from ``S`` posterior draws
  ``theta_s ~ q`` with ``p(z = k | x, theta_s) ∝ w_k N(x; mu_k, Lambda_k^-1)`` in float64;
  ``aleatoric`` is the second term (expected entropy given the parameters);
* ``novelty``: ``-log p(x | data)``, the negative posterior predictive log density (nats; per
  feature when ``per_dimension``).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..posterior import MixturePosterior

__all__ = ["UNCERTAINTY_KINDS", "n_active_draws", "point_uncertainty"]

UNCERTAINTY_KINDS = ("labels", "confidence", "entropy", "epistemic", "aleatoric", "novelty")


def _entropy(p: Tensor, dim: int) -> Tensor:
    """Entropy (nats) of probabilities ``p`` along ``dim``; ``0 log 0 = 0``."""
    return -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(dim)


def _draw_terms(posterior: MixturePosterior, num_draws: int, seed: int) -> dict[str, Tensor]:
    """Per-draw float64 constants of ``log w_k + log N(x; mu_k, Lambda_k^-1)`` for ``B = 1``."""
    with torch.random.fork_rng(devices=[]):  # MixturePosterior.sample reseeds the global RNG
        draws = posterior.sample(num_draws, seed=seed, dtype=torch.float64)
    f64 = torch.float64
    log_w = draws["log_weights"][:, 0].to(f64)  # (S, K)
    means = draws["means"][:, 0].to(f64)  # (S, K, D)
    prec = draws["precisions"][:, 0].to(f64)  # (S, K, D, D) full or (S, K, D) diag
    D = means.shape[-1]
    if posterior.covariance_type == "full":
        tril = draws["precision_trils"][:, 0]  # Lambda = T T^T, exact from the Bartlett draw  (S, K, D, D)
        log_det = 2.0 * torch.log(tril.diagonal(dim1=-2, dim2=-1)).sum(-1)  # (S, K)
        factor = tril
    else:
        log_det = torch.log(prec).sum(-1)  # (S, K)
        factor = prec
    const = log_w + 0.5 * log_det - 0.5 * D * math.log(2 * math.pi)  # (S, K)
    return {"const": const, "means": means, "factor": factor}


def _mutual_information(x: Tensor, terms: dict[str, Tensor], full: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(total, aleatoric, epistemic)`` entropies ``(n,)`` for a float64 chunk ``x (n, D)``."""
    const, means, factor = terms["const"], terms["means"], terms["factor"]
    S, K = const.shape
    mean_p = torch.zeros(x.shape[0], K, dtype=x.dtype, device=x.device)  # (n, K)
    aleatoric = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)  # (n,)
    for s in range(S):
        diff = x.unsqueeze(0) - means[s].unsqueeze(1)  # (K, n, D)
        if full:
            maha = (diff @ factor[s]).pow(2).sum(-1)  # |L^T (x - mu)|^2  (K, n)
        else:
            maha = (diff.pow(2) * factor[s].unsqueeze(1)).sum(-1)  # (K, n)
        log_joint = const[s].unsqueeze(1) - 0.5 * maha  # (K, n)
        p = torch.softmax(log_joint, dim=0)  # p(z | x, theta_s)  (K, n)
        mean_p += p.T
        aleatoric += _entropy(p, 0)
    mean_p /= S
    aleatoric /= S
    total = _entropy(mean_p, 1)  # H[E_theta p]  (n,)
    return total, aleatoric, (total - aleatoric).clamp_min(0.0)


def _read(points, start: int, stop: int, device: torch.device) -> Tensor:
    chunk = points[start:stop]
    if not isinstance(chunk, Tensor):
        chunk = torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float64))
    return chunk.to(device=device, dtype=torch.float64)


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
    """Labels, confidence, entropy, epistemic/aleatoric split and novelty of every point.

    ``posterior``: a ``MixturePosterior`` with ``B = 1``. ``points``: ``(N, D)`` tensor, array or
    memmap, read ``chunk_size`` rows at a time (default: sized so the ``(K, n, D)`` float64
    temporaries stay near 16 MiB). Returns CPU tensors ``(N,)``: ``labels`` int64, the rest float64.
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
        chunk_size = max(256, 2**21 // (K * D))
    device = posterior.params.mean.device
    terms = _draw_terms(posterior, num_draws, seed)
    full = posterior.covariance_type == "full"
    out: dict[str, list[Tensor]] = {k: [] for k in UNCERTAINTY_KINDS}
    starts = range(0, N, chunk_size)
    for start in tqdm(starts, desc="maps", unit="chunk", disable=not progress):
        x = _read(points, start, min(start + chunk_size, N), device)  # (n, D) float64
        log_r = posterior.log_responsibilities(x.to(posterior.params.mean.dtype))[0].double()  # (n, K)
        conf, labels = log_r.max(-1)
        out["labels"].append(labels)
        out["confidence"].append(conf.exp())
        out["entropy"].append(_entropy(log_r.exp(), 1))
        _, aleatoric, epistemic = _mutual_information(x, terms, full)
        out["epistemic"].append(epistemic)
        out["aleatoric"].append(aleatoric)
        novelty = -posterior.log_predictive(x)[0].double()  # (n,)
        out["novelty"].append(novelty / D if per_dimension else novelty)
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
