"""Merge moves: fuse two components when that raises the exact ELBO.

Coordinate ascent started from k-means with ``K`` clusters often leaves a true cluster split in two
(each half fitted well, neither able to absorb the other). A merge proposes ``q(z_n = j) + q(z_n = k)``
for one component and an empty other; statistics add, and the entropy of the merged assignments is
``H + sum_n [r_nj log r_nj + r_nk log r_nk - (r_nj + r_nk) log(r_nj + r_nk)]``, so the ELBO after
an M-step is exact and cheap to evaluate for many candidate pairs at once (batched as fits).
A merge is kept only if it raises the ELBO, so the full-batch ELBO still never decreases
(Hughes & Sudderth 2013 use the same accounting in memoized VI).

What merging ``k`` into ``j`` adds to ``j`` is ``k``'s statistics (``moved``, ``(B, P, ...)`` per
candidate pair). For full and diagonal components that is ``k``'s statistics as they are; low-rank
components carry factor statistics in their own coordinates, so the pass computes ``k``'s in
``j``'s coordinates (:func:`~dpmodels.models.lowrank.moved_stats`), with the change of the factors'
entropy in ``moved.entropy``. The merged statistics are then those of one valid ``q``, and the ELBO
of a merge stays exact.
"""

from __future__ import annotations

from dataclasses import astuple

import torch
from torch import Tensor

from ..models.base_measure import BaseMeasure
from ..models.family import VariationalParams
from ..priors import WeightPrior
from .updates import (
    Stats,
    best_factor_frame,
    elbo_from_stats,
    m_step,
    select_fits,
    weight_elbo_terms,
    weight_update,
)

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


def _gather_pairs(t: Tensor, idx: Tensor) -> Tensor:
    """``t (B, K, ...)`` at the components ``idx (B, P)``: ``(B, P, ...)``."""
    tail = t.shape[2:]
    return torch.gather(t, 1, idx.reshape(idx.shape + (1,) * len(tail)).expand(idx.shape + tail))


def moved_as_is(stats: Stats, pairs: Tensor) -> Stats:
    """What merging ``k`` into ``j`` adds to ``j`` for full and diagonal components: ``k``'s
    statistics, ``(B, P, ...)``, with no entropy change."""
    k = pairs[..., 1]
    zero = torch.zeros(k.shape, dtype=stats.entropy.dtype, device=stats.entropy.device)
    return Stats(*(_gather_pairs(t, k) for t in (stats.count, stats.s1, stats.s2)), zero)


def _merged_stats(
    stats: Stats, comp_xlogx: Tensor, pair_xlogx: Tensor, pairs: Tensor, moved: Stats | None = None
) -> Stats:
    """Statistics after merging each pair, as a batch ``(P * B, K, ...)`` (pair-major)."""
    B, P, _ = pairs.shape
    moved = moved_as_is(stats, pairs) if moved is None else moved
    j, k = pairs[..., 0].T, pairs[..., 1].T  # (P, B)

    def merge(t: Tensor, add: Tensor) -> Tensor:
        t = t.unsqueeze(0).expand((P,) + t.shape).clone()  # (P, B, K, ...)
        tail = (1,) * (t.dim() - 3)
        jj = j.reshape(P, B, 1, *tail).expand(P, B, 1, *t.shape[3:])
        kk = k.reshape(P, B, 1, *tail).expand(P, B, 1, *t.shape[3:])
        t.scatter_add_(2, jj, add.transpose(0, 1).unsqueeze(2))  # (P, B, 1, ...)
        t.scatter_(2, kk, torch.zeros_like(torch.gather(t, 2, kk)))
        return t.reshape((P * B,) + t.shape[2:])

    c = comp_xlogx  # (B, K)
    gain = torch.gather(c, 1, pairs[..., 0]) + torch.gather(c, 1, pairs[..., 1]) - pair_xlogx  # (B, P)
    entropy = (stats.entropy.unsqueeze(-1) + gain + moved.entropy).T.reshape(P * B)
    return Stats(
        merge(stats.count, moved.count), merge(stats.s1, moved.s1), merge(stats.s2, moved.s2), entropy
    )


def _pair_candidate_elbos(
    stats: Stats,
    comp_xlogx: Tensor,
    pair_xlogx: Tensor,
    pairs: Tensor,
    previous: VariationalParams,
    base: BaseMeasure,
    prior: WeightPrior,
    moved: Stats | None = None,
) -> Tensor:
    """Exact ELBO after merging each pair and an M-step, ``(B, P)``, without an M-step over all
    ``K`` components per pair.

    The ELBO is a sum of per-component terms (each a function of that component's statistics
    only), a weights term (a function of the counts) and the assignment entropy. Merging ``(j, k)``
    replaces the terms of ``j`` and ``k`` by that of the merged statistics and that of an empty
    component (zero: an empty component sits at the prior); the weights term is recomputed from the
    merged counts (cheap, ``O(K)``). Cost: one component update per pair and one per component,
    instead of ``K`` per pair."""
    B, P, _ = pairs.shape
    moved = moved_as_is(stats, pairs) if moved is None else moved
    j, k = pairs[..., 0], pairs[..., 1]  # (B, P)
    terms = best_factor_frame(stats, base, search_scale=False)[1]  # (B, K)

    def pair_sum(t: Tensor) -> Tensor:  # t (B, K, ...) -> t_j + t_k  (B, P, ...)
        return _gather_pairs(t, j) + _gather_pairs(t, k)

    zero = torch.zeros(B, dtype=stats.entropy.dtype, device=stats.entropy.device)
    pair_stats = Stats(
        *(_gather_pairs(t, j) + m for t, m in zip(astuple(stats)[:3], astuple(moved)[:3], strict=True)), zero
    )
    pair_terms = best_factor_frame(pair_stats, base, search_scale=False)[1]  # (B, P)
    comp_total = terms.sum(-1, keepdim=True) - pair_sum(terms) + pair_terms  # (B, P)
    counts = stats.count.unsqueeze(1).expand(B, P, -1).clone()  # (B, P, K) merged counts
    counts.scatter_add_(2, j.unsqueeze(-1), torch.gather(counts, 2, k.unsqueeze(-1)))
    counts.scatter_(2, k.unsqueeze(-1), torch.zeros_like(counts[..., :1]))
    flat = counts.reshape(B * P, -1)  # fit-major rows: row b * P + p
    alpha = prior.expected_concentration(previous, stats.count[:, 0].clamp_min(0.0)).repeat_interleave(P)
    weights = weight_update(flat.clamp_min(0.0), prior, alpha)
    weight_terms = weight_elbo_terms(flat, weights, prior).reshape(B, P)
    gain = torch.gather(comp_xlogx, 1, j) + torch.gather(comp_xlogx, 1, k) - pair_xlogx  # (B, P)
    return comp_total + weight_terms + stats.entropy.unsqueeze(-1) + gain + moved.entropy


def _best_m_step(stats: Stats, base: BaseMeasure, prior: WeightPrior, previous: VariationalParams):
    """M-step and exact ELBO of merged statistics (low-rank factors whitened where that helps,
    :func:`~dpmodels.infer.updates.best_factor_frame`, as the candidates were scored)."""
    if base.covariance == "lowrank":  # the other types have one frame: no extra component update
        stats = best_factor_frame(stats, base, search_scale=False)[0]
    params = m_step(stats, base, prior, previous)
    return params, elbo_from_stats(stats, params, base, prior)


def _single_merge(
    stats: Stats, comp_xlogx: Tensor, pair_xlogx: Tensor, pairs: Tensor, best: Tensor, moved: Stats
) -> Stats:
    """Statistics ``(B, K, ...)`` after merging, in every fit, its pair ``best (B,)``."""
    rows = torch.arange(pairs.shape[0], device=pairs.device)
    chosen = pairs[rows, best].unsqueeze(1)  # (B, 1, 2)
    moved_best = Stats(*(t[rows, best].unsqueeze(1) for t in astuple(moved)))
    return _merged_stats(stats, comp_xlogx, pair_xlogx[rows, best].unsqueeze(1), chosen, moved_best)


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
    moved: Stats | None = None,
) -> tuple[VariationalParams, Tensor, Tensor]:
    """Evaluate every candidate merge and keep, per fit, whatever raises ``current_elbo`` most:
    the best single merge, or all disjoint merges with positive gain applied together (their
    combined ELBO is exact too, since disjoint merges touch different columns of ``q(z)``).

    Candidates are ranked by :func:`_pair_candidate_elbos`; the merge that is kept has its ELBO
    recomputed from the merged statistics as a whole. ``moved``: what each merge adds to the kept
    component (``None``: the other component's statistics as they are; low-rank components need
    :func:`~dpmodels.models.lowrank.moved_stats`). Returns ``(params, elbo (B,), n_merged (B,) int)``.
    """
    B, P, _ = pairs.shape
    if P == 0:
        return current, current_elbo, torch.zeros(B, dtype=torch.long, device=current_elbo.device)
    moved = moved_as_is(stats, pairs) if moved is None else moved
    cand_elbo = _pair_candidate_elbos(stats, comp_xlogx, pair_xlogx, pairs, previous, base, prior, moved)
    cand_elbo = torch.nan_to_num(cand_elbo, nan=-torch.inf).masked_fill(~valid, -torch.inf)  # (B, P)
    best = cand_elbo.argmax(-1)  # (B,)
    threshold = current_elbo + 1e-9 * current_elbo.abs()
    single = _single_merge(stats, comp_xlogx, pair_xlogx, pairs, best, moved)
    cand, best_elbo = _best_m_step(single, base, prior, previous)  # exact, for the merge as applied
    accept = valid.any(-1) & (best_elbo > threshold)
    params = select_fits(accept, cand, current)
    elbo = torch.where(accept, best_elbo, current_elbo)
    n_merged = accept.long()
    combined, n_pairs = _combine_disjoint(
        stats, comp_xlogx, pair_xlogx, pairs, cand_elbo - threshold.unsqueeze(-1), moved
    )
    if bool((n_pairs > 1).any()):
        multi, multi_elbo = _best_m_step(combined, base, prior, previous)
        better = (n_pairs > 1) & (multi_elbo > elbo)
        params = select_fits(better, multi, params)
        elbo = torch.where(better, multi_elbo, elbo)
        n_merged = torch.where(better, n_pairs, n_merged)
    return params, elbo, n_merged


def _combine_disjoint(
    stats: Stats, comp_xlogx: Tensor, pair_xlogx: Tensor, pairs: Tensor, gains: Tensor, moved: Stats
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
            for t, m in ((count, moved.count), (s1, moved.s1), (s2, moved.s2)):
                t[b, j] += m[b, p]
                t[b, k] = 0
            entropy[b] += comp_xlogx[b, j] + comp_xlogx[b, k] - pair_xlogx[b, p] + moved.entropy[b, p]
            n_pairs[b] += 1
    return Stats(count, s1, s2, entropy), n_pairs
