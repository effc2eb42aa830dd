"""Merge moves: fuse two components when that raises the exact ELBO.

Coordinate ascent started from k-means with ``K`` clusters often leaves a true cluster split in two
(each half fitted well, neither able to absorb the other). A merge proposes ``q(z_n = j) + q(z_n = k)``
for one component and an empty other; statistics add, and the entropy of the merged assignments is
``H + sum_n [r_nj log r_nj + r_nk log r_nk - (r_nj + r_nk) log(r_nj + r_nk)]``, so the ELBO after
an M-step is exact and cheap to evaluate for many candidate pairs at once (batched as fits).
A merge is kept only if it raises the ELBO, so the full-batch ELBO still never decreases
(Hughes & Sudderth 2013 use the same accounting in memoized VI).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..models.base_measure import BaseMeasure
from ..models.family import VariationalParams
from ..priors import WeightPrior
from .updates import Stats, elbo_from_stats, m_step, select_fits

__all__ = ["candidate_pairs", "xlogx", "try_merges"]


def xlogx(r: Tensor) -> Tensor:
    return torch.where(r > 0, r * torch.log(r.clamp_min(1e-300)), torch.zeros_like(r))


def candidate_pairs(
    params: VariationalParams, counts: Tensor, n_neighbours: int = 3
) -> tuple[Tensor, Tensor]:
    """For every used component, its nearest used neighbours: ``pairs (B, P, 2)``, ``valid (B, P)``.

    Distance between means is scaled by the components' average spread, so "near" means
    "overlapping relative to their size".
    """
    B, K, D = params.mean.shape
    used = counts > 0.5  # (B, K)
    spread = params.scale_tril.pow(2).sum((-1, -2)) if params.covariance == "full" else params.scale.sum(-1)
    spread = spread / params.dof.clamp_min(1.0)  # ~ trace of the covariance  (B, K)
    dist = torch.cdist(params.mean, params.mean).pow(2)  # (B, K, K)
    dist = dist / (spread.unsqueeze(-1) + spread.unsqueeze(-2)).clamp_min(1e-12)
    pair_ok = used.unsqueeze(-1) & used.unsqueeze(-2) & ~torch.eye(K, dtype=torch.bool, device=dist.device)
    dist = dist.masked_fill(~pair_ok, torch.inf)
    m = min(n_neighbours, max(K - 1, 1))
    near = dist.topk(m, dim=-1, largest=False)  # (B, K, m)
    first = torch.arange(K, device=dist.device).view(1, K, 1).expand(B, K, m)
    pairs = torch.stack([first, near.indices], dim=-1).reshape(B, K * m, 2)
    valid = torch.isfinite(near.values).reshape(B, K * m)
    return pairs, valid


def _merged_stats(stats: Stats, comp_xlogx: Tensor, pair_xlogx: Tensor, pairs: Tensor) -> Stats:
    """Statistics after merging each pair, as a batch ``(P * B, K, ...)`` (pair-major)."""
    B, P, _ = pairs.shape
    j, k = pairs[..., 0].T, pairs[..., 1].T  # (P, B)

    def merge(t: Tensor) -> Tensor:
        t = t.unsqueeze(0).expand((P,) + t.shape).clone()  # (P, B, K, ...)
        tail = (1,) * (t.dim() - 3)
        jj = j.reshape(P, B, 1, *tail).expand(P, B, 1, *t.shape[3:])
        kk = k.reshape(P, B, 1, *tail).expand(P, B, 1, *t.shape[3:])
        moved = torch.gather(t, 2, kk)
        t.scatter_add_(2, jj, moved)
        t.scatter_(2, kk, torch.zeros_like(moved))
        return t.reshape((P * B,) + t.shape[2:])

    c = comp_xlogx  # (B, K)
    gain = torch.gather(c, 1, pairs[..., 0]) + torch.gather(c, 1, pairs[..., 1]) - pair_xlogx  # (B, P)
    entropy = (stats.entropy.unsqueeze(-1) + gain).T.reshape(P * B)
    return Stats(merge(stats.count), merge(stats.s1), merge(stats.s2), entropy)


def _tile(t: Tensor, P: int) -> Tensor:
    return t.unsqueeze(0).expand((P,) + t.shape).reshape((P * t.shape[0],) + t.shape[1:])


def try_merges(
    stats: Stats,
    comp_xlogx: Tensor,
    pair_xlogx: Tensor,
    pairs: Tensor,
    valid: Tensor,
    current: VariationalParams,
    current_elbo: Tensor,
    previous: VariationalParams,
    base: BaseMeasure,
    prior: WeightPrior,
) -> tuple[VariationalParams, Tensor, Tensor]:
    """Evaluate every candidate merge and keep, per fit, whatever raises ``current_elbo`` most:
    the best single merge, or all disjoint merges with positive gain applied together (their
    combined ELBO is exact too, since disjoint merges touch different columns of ``q(z)``).

    Returns ``(params, elbo (B,), n_merged (B,) int)``.
    """
    B, P, _ = pairs.shape
    if P == 0:
        return current, current_elbo, torch.zeros(B, dtype=torch.long, device=current_elbo.device)
    merged_stats = _merged_stats(stats, comp_xlogx, pair_xlogx, pairs)
    base_t = replace(
        base, **{f: _tile(getattr(base, f), P) for f in ("mean", "mean_precision", "dof", "scale")}
    )
    prev_t = previous.map(lambda t: _tile(t, P))
    cand = m_step(merged_stats, base_t, prior, prev_t)
    cand_elbo = elbo_from_stats(merged_stats, cand, base_t, prior).reshape(P, B).T  # (B, P)
    cand_elbo = cand_elbo.masked_fill(~valid, -torch.inf)
    best_elbo, best = cand_elbo.max(-1)  # (B,)
    threshold = current_elbo + 1e-9 * current_elbo.abs()
    accept = best_elbo > threshold
    flat = best * B + torch.arange(B, device=best.device)  # row of (P * B) for each fit
    params = select_fits(accept, cand.map(lambda t: t[flat]), current)
    elbo = torch.where(accept, best_elbo, current_elbo)
    n_merged = accept.long()
    combined, n_pairs = _combine_disjoint(
        stats, comp_xlogx, pair_xlogx, pairs, cand_elbo - threshold.unsqueeze(-1)
    )
    if bool((n_pairs > 1).any()):
        multi = m_step(combined, base, prior, previous)
        multi_elbo = elbo_from_stats(combined, multi, base, prior)
        better = (n_pairs > 1) & (multi_elbo > elbo)
        params = select_fits(better, multi, params)
        elbo = torch.where(better, multi_elbo, elbo)
        n_merged = torch.where(better, n_pairs, n_merged)
    return params, elbo, n_merged


def _combine_disjoint(
    stats: Stats, comp_xlogx: Tensor, pair_xlogx: Tensor, pairs: Tensor, gains: Tensor
) -> tuple[Stats, Tensor]:
    """Per fit, greedily take pairs by decreasing positive gain that share no component, and
    apply all of them to the statistics. Returns the merged statistics and the number of pairs."""
    count, s1, s2, entropy = (t.clone() for t in (stats.count, stats.s1, stats.s2, stats.entropy))
    n_pairs = torch.zeros(count.shape[0], dtype=torch.long, device=count.device)
    for b in range(count.shape[0]):
        used: set[int] = set()
        for p in gains[b].argsort(descending=True).tolist():
            if not bool(gains[b, p] > 0):
                break
            j, k = pairs[b, p].tolist()
            if j in used or k in used:
                continue
            used.update((j, k))
            for t in (count, s1, s2):
                t[b, j] += t[b, k]
                t[b, k] = 0
            entropy[b] += comp_xlogx[b, j] + comp_xlogx[b, k] - pair_xlogx[b, p]
            n_pairs[b] += 1
    return Stats(count, s1, s2, entropy), n_pairs
