"""Initialisation: batched k-means++ seeding plus a few Lloyd iterations on a subsample.

Each of the ``B`` fits gets its own seeding (restarts differ), the clusters are sorted by size
(largest first, which suits stick-breaking priors), and hard assignments of the subsample, scaled
to the full data size, give the statistics of the first M-step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.quadratic import choose_form, weighted_scatter
from .updates import Stats

__all__ = ["kmeans_plusplus", "lloyd", "initial_stats"]


def _sq_dist(x: Tensor, centres: Tensor, x_sq: Tensor | None = None) -> Tensor:
    """Squared distances ``(B, n, C)`` between ``x (B, n, D)`` and ``centres (B, C, D)``; ``x_sq``
    is ``|x|^2`` ``(B, n, 1)`` when the caller already has it (it is the same for every centre)."""
    x_sq = x.pow(2).sum(-1, keepdim=True) if x_sq is None else x_sq
    return (x_sq - 2 * x @ centres.transpose(1, 2) + centres.pow(2).sum(-1).unsqueeze(1)).clamp_min(0.0)


def kmeans_plusplus(x: Tensor, n_clusters: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007) per fit; ``x (B, n, D) -> centres (B, C, D)``."""
    B, n, D = x.shape
    rows = torch.arange(B, device=x.device)
    first = torch.randint(n, (B,), generator=generator).to(x.device)  # CPU generator on any device
    centres = [x[rows, first]]  # each (B, D)
    x_sq = x.pow(2).sum(-1, keepdim=True)  # (B, n, 1), once for all centres
    closest = _sq_dist(x, centres[0].unsqueeze(1), x_sq).squeeze(-1)  # (B, n)
    for _ in range(1, n_clusters):
        total = closest.sum(-1, keepdim=True)
        probs = torch.where(total > 0, closest / total.clamp_min(1e-30), torch.full_like(closest, 1.0 / n))
        pick = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(x.device)  # (B,)
        centres.append(x[rows, pick])
        closest = torch.minimum(closest, _sq_dist(x, centres[-1].unsqueeze(1), x_sq).squeeze(-1))
    return torch.stack(centres, dim=1)


def lloyd(x: Tensor, centres: Tensor, n_iter: int = 10) -> tuple[Tensor, Tensor]:
    """Lloyd iterations; returns ``(centres (B, C, D), labels (B, n))``. Empty clusters stay put."""
    C = centres.shape[1]
    x_sq = x.pow(2).sum(-1, keepdim=True)  # (B, n, 1), once for all iterations
    labels = _sq_dist(x, centres, x_sq).argmin(-1)
    for _ in range(n_iter):
        onehot = torch.nn.functional.one_hot(labels, C).to(x.dtype)  # (B, n, C)
        counts = onehot.sum(1)  # (B, C)
        sums = onehot.transpose(1, 2) @ x  # (B, C, D)
        centres = torch.where(counts.unsqueeze(-1) > 0, sums / counts.clamp_min(1).unsqueeze(-1), centres)
        new_labels = _sq_dist(x, centres, x_sq).argmin(-1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return centres, labels


def initial_stats(
    x: Tensor,
    truncation: int,
    num_points: int,
    generator: torch.Generator,
    n_clusters: int | None = None,
    covariance: str = "full",
    lloyd_iter: int = 10,
) -> Stats:
    """Hard-assignment statistics from k-means on a centred subsample ``x (B, n, D)``.

    ``n_clusters`` defaults to ``truncation`` (capped at ``n``); the rest of the ``K`` components
    start empty, i.e. at the prior. Statistics are scaled by ``num_points / n``.
    """
    B, n, D = x.shape
    C = min(n_clusters or truncation, truncation, n)
    x32 = x.float()  # seeding and Lloyd in float32; the statistics below in float64
    centres = kmeans_plusplus(x32, C, generator)
    _, labels = lloyd(x32, centres, lloyd_iter)
    counts = torch.nn.functional.one_hot(labels, truncation).sum(1)  # (B, K)
    rank = torch.empty_like(counts)
    rank.scatter_(
        1,
        counts.argsort(dim=-1, descending=True),
        torch.arange(truncation, device=counts.device).expand_as(counts),
    )
    labels = torch.gather(rank, 1, labels)  # relabel: largest cluster first
    onehot = torch.nn.functional.one_hot(labels, truncation).double()  # (B, n, K)
    x64 = x.double()
    r_t = onehot.transpose(1, 2)  # (B, K, n)
    s1 = r_t @ x64
    form = choose_form(covariance, D)
    s2 = weighted_scatter(onehot, x64, form)  # (B, K, D, D) or (B, K, D)
    stats = Stats(r_t.sum(-1), s1, s2, torch.zeros(B, dtype=torch.float64, device=x.device))
    return stats.scale(num_points / n)
