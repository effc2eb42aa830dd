"""How much memory a fit (and its maps) will take, checked before anything large is allocated.

The estimates follow the largest temporaries of the natural-gradient engine and of the maps, with
a safety factor for the copies an expression makes; they were calibrated on CPU peaks (e.g.
``K = 1000`` components on 600 points: about 0.4 GB measured, 0.4 GB estimated). The merge moves
score ``3 K`` candidate pairs, each with ``K`` merged weights, so memory grows as ``K^2``: a
truncation of 5000 needs about 10 GB whatever the number of points.
"""

from __future__ import annotations

import os

import torch

__all__ = [
    "InsufficientMemoryError",
    "available_memory",
    "check_memory",
    "estimate_fit_bytes",
    "estimate_maps_bytes",
]

_COPIES = 16  # temporaries an expression over a (.., K, ..) tensor makes, measured on CPU


class InsufficientMemoryError(ValueError, MemoryError):
    """A fit or its maps would need more memory than is available (raised before allocating)."""


def _features(covariance: str, D: int, rank: int = 0) -> int:
    """Values per component and feature-sized temporaries: ``D^2`` (full), ``D (rank + 2)`` plus the
    row precision (lowrank), ``D`` (diag)."""
    if covariance == "full":
        return D * D
    if covariance == "lowrank":
        return D * (rank + 2) + (rank + 1) ** 2
    return D


def estimate_fit_bytes(
    B: int,
    N: int,
    D: int,
    K: int,
    covariance: str = "full",
    *,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    merge: bool = True,
    itemsize: int = 4,
    data_in_memory: bool = True,
    rank: int = 0,
) -> int:
    """Peak bytes of fitting ``B`` mixtures with truncation ``K`` to ``(N, D)`` points each
    (``data_in_memory=False`` for points read from disk chunk by chunk; ``rank``: low-rank
    components' number of factors)."""
    Q = _features(covariance, D, rank)
    n = min(N, batch_size or N)
    chunk = min(n, chunk_size or max(256, 2**20 // max(1, B * max(K, Q))))
    data = 2 * B * N * D * itemsize if data_in_memory else 0  # the data and its standardised copy
    params = _COPIES * B * K * (Q + D + 4) * 8  # params, statistics, sorted candidates (float64)
    e_step = 6 * B * chunk * (max(K, Q) + D) * itemsize  # log r, r, quadratic features
    n_init = min(N, 20_000)
    init = 4 * B * n_init * min(K, n_init) * itemsize  # k-means distances
    merges = 0
    if merge and K > 1:
        P = 3 * K  # candidate pairs: 3 nearest neighbours per component
        m = min(chunk, 8192)
        merges = (
            4 * B * m * P * 8  # pairwise responsibilities of a chunk
            + _COPIES * B * P * (K + Q + D) * 8  # merged weights and statistics per pair
            + 6 * B * K * K * 8  # distances between component means
        )
    return int(data + params + e_step + init + merges)


def estimate_maps_bytes(
    N: int, D: int, K: int, covariance: str = "full", num_draws: int = 32, rank: int = 0
) -> int:
    """Peak bytes of the maps of one layer (:func:`dpmodels.maps.layer_maps`) with ``num_draws`` draws."""
    Q = _features(covariance, D, rank)
    S = num_draws
    chunk = min(N, max(256, 2**21 // max(1, K * S)))
    draws = 3 * S * K * (Q + D + 2) * 8  # every draw's quadratic-form terms (float64)
    temporaries = 6 * chunk * S * K * 8  # (n, S, K) log joints and their exponentials
    return int(draws + temporaries + 8 * N * 8)


def available_memory(device: str | torch.device = "cpu") -> int | None:
    """Bytes available to allocate now: free GPU memory for a CUDA device; otherwise psutil's
    ``available``, else ``MemAvailable`` of ``/proc/meminfo``, else free pages (``None`` if unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GB"


def check_memory(needed: int, what: str, knobs: str, device: str | torch.device = "cpu") -> None:
    """Raise :class:`InsufficientMemoryError` when ``needed`` bytes exceed what is available.

    ``DPMODELS_MEMORY_LIMIT`` (bytes, or with a ``G``/``M`` suffix) caps the budget below what the
    machine reports, e.g. on a shared node; ``0`` turns the check off."""
    limit = os.environ.get("DPMODELS_MEMORY_LIMIT", "").strip().upper()
    available = available_memory(device)
    if limit:
        factor = {"G": 2**30, "M": 2**20}.get(limit[-1], 1)
        cap = int(float(limit.rstrip("GM")) * factor)
        if cap == 0:
            return
        available = cap if available is None else min(available, cap)
    if available is None or needed <= 0.9 * available:
        return
    raise InsufficientMemoryError(
        f"{what} needs about {_gb(needed)} of memory but only {_gb(available)} is available "
        f"({torch.device(device).type}); refused before allocating. {knobs}"
    )
