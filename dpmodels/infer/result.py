"""What every engine returns, plus shared helpers for data chunks and convergence warnings."""

from __future__ import annotations

from dataclasses import astuple, dataclass, field

import torch
from torch import Tensor

from ..models.diagonal import diag_plan
from ..models.dpgmm import ModelSpec
from ..models.family import VariationalParams, expected_log_weights, quadratic_plan
from ..models.lowrank import moved_stats
from .merge import xlogx
from .updates import Stats, diag_e_step, e_step, lowrank_e_step

__all__ = ["ConvergenceWarning", "FitResult", "full_pass", "reduce_stats", "auto_chunk_size"]


class ConvergenceWarning(UserWarning):
    """A fit stopped at its iteration limit before the ELBO settled (the fit is still returned)."""


@dataclass
class FitResult:
    """Outcome of fitting ``B`` independent mixtures.

    ``params`` are in data coordinates; ``elbo (B,)`` is the final total ELBO in nats (closed
    form, whatever the engine); ``elbo_history (T, B)`` is per point (nats / point), exact for
    full-batch iterations and a stochastic estimate for minibatch steps; ``counts (B, K)`` are
    the expected number of fitted points per component at the end.
    """

    params: VariationalParams
    spec: ModelSpec
    elbo: Tensor
    elbo_history: Tensor
    counts: Tensor
    num_points: int
    n_iter: int
    converged: Tensor
    fit_seconds: float
    engine: str
    info: dict = field(default_factory=dict)


def auto_chunk_size(batch: int, truncation: int, features: int, budget: int = 2**22) -> int:
    """Points per E-step chunk so that a temporary of ``B * truncation * features`` values per
    point stays near ``budget`` elements (16 MiB in float32)."""
    return int(max(256, budget // max(1, batch * truncation * max(features, 1))))


def full_pass(
    data: Tensor,
    shift: Tensor,
    params: VariationalParams,
    chunk_size: int,
    device: torch.device,
    dtype: torch.dtype,
    pairs: Tensor | None = None,
    fits: Tensor | None = None,
    shard=None,
    valid: Tensor | None = None,
):
    """Statistics of all of ``data (B, N, D)`` (any device), centred at ``shift (B, D)``.

    With ``pairs (B, P, 2)`` also returns ``sum_n r log r`` per component ``(B, K)``,
    ``sum_n (r_j + r_k) log(r_j + r_k)`` per pair ``(B, P)`` and, for low-rank components, the
    statistics that merging ``k`` into ``j`` moves (``Stats`` shaped ``(B, P, ...)``, see
    :func:`~dpmodels.models.lowrank.moved_stats`; ``None`` for the other types), for merge moves:
    ``(stats, comp_xlogx, pair_xlogx, moved)``. ``fits`` restricts the pass to those fits (``shift`` and
    ``params`` must already be restricted). With ``shard`` (a :class:`~dpmodels.distributed.Shard`
    with a group), ``data`` is this rank's shard and everything returned is summed over all ranks:
    one all-reduce of ``B K D^2``-sized statistics, independent of the number of points.
    ``valid (B, P)``: which pairs are candidates (low-rank components compute per-pair statistics
    only for the pairs valid in some fit; the others get zeros).
    """
    cpu_fits = None if fits is None else fits.cpu()
    params_c = params.map(lambda t: t.to(device=device, dtype=dtype))
    e_log_pi = expected_log_weights(params_c)
    diag = params.covariance == "diag"
    # per-component factors, once per pass (diagonal: weights from the float64 parameters)
    plan = diag_plan(params, dtype, device, shift) if diag else quadratic_plan(params_c)
    shift_c = shift.to(device=device, dtype=dtype).unsqueeze(1)
    lowrank = pairs is not None and params.covariance == "lowrank"
    total, comp, pair, pair_terms = None, 0.0, 0.0, None
    cols = None
    if lowrank:
        cols = torch.arange(pairs.shape[1], device=pairs.device)
        if valid is not None:
            cols = valid.to(pairs.device).any(0).nonzero().flatten()
    for start in range(0, data.shape[1], chunk_size):
        x = data[:, start : start + chunk_size]
        if cpu_fits is not None:
            x = x[cpu_fits]
        x = x.to(device=device, dtype=dtype)
        if not diag:  # the diagonal plan subtracts shift and its centre in one step
            x = x - shift_c
        if lowrank:
            stats, log_r, terms = lowrank_e_step(params_c, x, e_log_pi, plan, pairs[:, cols])
            pair_terms = (
                terms if pair_terms is None else tuple(a + b for a, b in zip(pair_terms, terms, strict=True))
            )
        elif diag and pairs is not None:
            stats, _, comp_part, pair_part = diag_e_step(plan, x, e_log_pi, pairs)
            comp, pair = comp + comp_part, pair + pair_part
        else:
            stats, log_r = e_step(params_c, x, e_log_pi, plan)
        total = stats if total is None else total + stats
        if pairs is not None and not diag:
            for sub in range(0, log_r.shape[1], 8192):  # (B, 8192, P) temporaries at most
                r = log_r[:, sub : sub + 8192].double().exp()  # (B, m, K)
                comp = comp + xlogx(r).sum(1)
                idx = pairs.unsqueeze(1).expand(-1, r.shape[1], -1, -1)  # (B, m, P, 2)
                both = torch.gather(r, 2, idx[..., 0]) + torch.gather(r, 2, idx[..., 1])  # (B, m, P)
                pair = pair + xlogx(both).sum(1)
    if shard is not None and shard.group is not None:
        if pairs is None:
            return reduce_stats(total, shard)
        comp = torch.as_tensor(comp, dtype=torch.float64, device=device).expand(total.count.shape)
        pair = torch.as_tensor(pair, dtype=torch.float64, device=device).expand(pairs.shape[:2])
        *parts, comp, pair = shard.sum(*astuple(total), *(pair_terms or ()), comp, pair)
        if lowrank:
            parts, pair_terms = parts[:4], tuple(parts[4:])
        total = Stats(*parts)
    if pairs is None:
        return total
    moved = None
    if lowrank:
        pair_terms = tuple(_scatter_pairs(t, cols, pairs.shape[1]) for t in pair_terms)
        moved = Stats(
            *moved_stats(total.count, total.s1, total.s2, pair_terms, pairs, plan.p_inv, plan.log_det_p)
        )
    return total, comp, pair, moved


def _scatter_pairs(t: Tensor, cols: Tensor, P: int) -> Tensor:
    """``t (B, P', ...)`` computed for the pairs ``cols (P',)`` as ``(B, P, ...)``, zeros elsewhere."""
    out = t.new_zeros((t.shape[0], P) + t.shape[2:])
    out[:, cols] = t
    return out


def reduce_stats(stats: Stats, shard) -> Stats:
    """``stats`` summed over the ranks of ``shard``'s group (itself without one)."""
    if shard is None or shard.group is None:
        return stats
    return Stats(*shard.sum(*astuple(stats)))
