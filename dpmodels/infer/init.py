"""Initialisation: batched k-means++ seeding plus a few Lloyd iterations on a subsample.

Each of the ``B`` fits gets its own seeding (restarts differ), the clusters are sorted by size
(largest first, which suits stick-breaking priors), and hard assignments of the subsample, scaled
to the full data size, give the statistics of the first M-step.

k-means (seeding and Lloyd) costs ``n * D`` per centre and iteration, so on wide data it runs on a
random part of the subsample holding about :data:`KMEANS_ELEMENTS` values (at least
:data:`KMEANS_POINTS_PER_CENTRE` points per centre); every point of the subsample is then assigned
to the nearest final centre, so the first statistics still use all of them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models.quadratic import choose_form, weighted_scatter
from .updates import Stats

__all__ = [
    "KMEANS_ELEMENTS",
    "KMEANS_POINTS_PER_CENTRE",
    "kmeans_plusplus",
    "lloyd",
    "kmeans_labels",
    "initial_stats",
]

KMEANS_ELEMENTS = 2**22  # values (points x features) k-means runs on: 8192 points at D = 512
KMEANS_POINTS_PER_CENTRE = 100  # but never fewer points than this per centre (or all of them)


def _sq_dist(x: Tensor, centres: Tensor, x_sq: Tensor | None = None) -> Tensor:
    """Squared distances ``(B, n, C)`` between ``x (B, n, D)`` and ``centres (B, C, D)``; ``x_sq``
    is ``|x|^2`` ``(B, n, 1)`` when the caller already has it (it is the same for every centre)."""
    x_sq = x.pow(2).sum(-1, keepdim=True) if x_sq is None else x_sq
    # x @ (2 c): doubling the (B, C, D) centres, not the (B, n, D) points (bitwise the same: 2 is exact)
    cross = x @ (2 * centres).transpose(1, 2)  # (B, n, C)
    return (x_sq - cross + centres.pow(2).sum(-1).unsqueeze(1)).clamp_min(0.0)


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


def kmeans_labels(x: Tensor, n_clusters: int, generator: torch.Generator, n_iter: int = 10) -> Tensor:
    """k-means++ and ``n_iter`` Lloyd iterations on ``x (B, n, D)``; returns the labels ``(B, n)``.

    Where ``n * D`` exceeds :data:`KMEANS_ELEMENTS`, the centres come from a random subset of the
    points (the same rows for every fit; at least :data:`KMEANS_POINTS_PER_CENTRE` per centre) and
    every point is then labelled by its nearest centre."""
    B, n, D = x.shape
    m = min(n, max(KMEANS_ELEMENTS // D, KMEANS_POINTS_PER_CENTRE * n_clusters))
    # the rows of x may come in data order (sorted indices): a random subset, not the first m
    part = x if m == n else x[:, torch.randperm(n, generator=generator)[:m].sort().values.to(x.device)]
    centres, labels = lloyd(part, kmeans_plusplus(part, n_clusters, generator), n_iter)
    return labels if m == n else _sq_dist(x, centres).argmin(-1)


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
    labels = kmeans_labels(x32, C, generator, lloyd_iter)  # (B, n)
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
