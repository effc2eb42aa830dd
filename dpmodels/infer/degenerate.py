"""Detect data whose empirical covariance is singular, and say so with a warning.

Degenerate activations are common in convnets: dead ReLU units give channels that are zero at
every position, copied or linearly dependent channels give a rank-deficient covariance, and a
layer sampled at fewer positions than it has channels (``N <= D``) cannot have a full-rank
covariance. The engines stay finite on such data (the base measure carries a ridge), but the
fitted covariances along the missing directions are set by that ridge, not by the data; the
warning names the channels and what to do about it.
"""

from __future__ import annotations

import warnings

import torch

from ..data.source import chunk_rows

__all__ = ["DegenerateDataWarning", "degenerate_report", "warn_if_degenerate"]


class DegenerateDataWarning(UserWarning):
    """The data have constant channels or a singular empirical covariance (the fit still runs)."""


def degenerate_report(
    data, covariance: str = "full", rtol: float = 1e-10, chunk_size: int | None = None, group=None
) -> list[str]:
    """Problems found in ``data (B, N, D)`` (tensor or :class:`~dpmodels.data.PointSource`), one line each.

    Checks, per fit: channels that hold one value at every point (exact, by min == max); for
    ``covariance="full"`` also ``N <= D`` and a correlation matrix of the non-constant channels
    whose smallest eigenvalue is below ``rtol`` (duplicated or linearly dependent channels).
    One chunked pass over the data, in float64; with ``group`` (a
    :class:`~dpmodels.distributed.DataParallel`) over the points of all ranks together.
    """
    B, N, D = data.shape
    chunk_size = chunk_size or chunk_rows(B, D)
    lo = torch.full((B, D), torch.inf, dtype=torch.float64)
    hi = torch.full((B, D), -torch.inf, dtype=torch.float64)
    pivot = data[:, :1].double().cpu()  # (B, 1, D): centring keeps the scatter accurate
    if group is not None:  # every rank centres at rank 0's first point
        pivot = group.all_reduce(pivot if group.rank == 0 else torch.zeros_like(pivot))[0]
    s1 = torch.zeros(B, D, dtype=torch.float64)
    s2 = torch.zeros(B, D, D, dtype=torch.float64)
    for start in range(0, N, chunk_size):
        x = data[:, start : start + chunk_size].cpu()  # (B, n, D) in the data's dtype
        # min and max are exact in the data's dtype: no float64 copy of the chunk for them
        lo, hi = torch.minimum(lo, x.amin(1).double()), torch.maximum(hi, x.amax(1).double())
        if covariance == "full":
            c = x - pivot  # float64 (pivot's dtype)
            s1 += c.sum(1)
            s2 += c.transpose(1, 2) @ c  # (B, D, D)
    if group is not None:
        (lo,), (hi,) = group.all_reduce(lo, op="min"), group.all_reduce(hi, op="max")
        s1, s2, total = group.all_reduce(s1, s2, torch.tensor([float(N)], dtype=torch.float64))
        N = int(total.item())
    problems = []
    for b in range(B):
        where = f"data set {b}: " if B > 1 else ""
        const = (lo[b] == hi[b]).nonzero().flatten().tolist()
        if const:
            problems.append(f"{where}{len(const)} of {D} channels are constant (first: {const[:8]})")
        if covariance != "full":
            continue
        if N <= D:
            problems.append(f"{where}N={N} points <= D={D} features: the empirical covariance is singular")
            continue
        keep = (lo[b] != hi[b]).nonzero().flatten()
        if len(keep) < 2:
            continue
        mean = s1[b, keep] / N
        cov = s2[b][keep][:, keep] / N - mean.unsqueeze(-1) * mean.unsqueeze(-2)  # (D', D')
        sd = cov.diagonal().clamp_min(1e-300).sqrt()
        corr = cov / (sd.unsqueeze(-1) * sd.unsqueeze(-2))
        smallest = float(torch.linalg.eigvalsh(corr)[0])
        if smallest < rtol:
            problems.append(
                f"{where}duplicated or linearly dependent channels: the correlation matrix's smallest "
                f"eigenvalue is {smallest:.1e} (singular covariance)"
            )
    return problems


def warn_if_degenerate(data, covariance: str = "full", stacklevel: int = 2, group=None) -> list[str]:
    """Issue one :class:`DegenerateDataWarning` listing :func:`degenerate_report`'s findings; returns them."""
    problems = degenerate_report(data, covariance, group=group)
    if problems:
        warnings.warn(
            "degenerate data: " + "; ".join(problems) + ". The fit runs, but covariances along these "
            "directions come from the prior's ridge, not from the data; drop constant or duplicated "
            "channels, project with PCA (dpmodels.activations), or use covariance='diag'.",
            DegenerateDataWarning,
            stacklevel=stacklevel,
        )
    return problems
