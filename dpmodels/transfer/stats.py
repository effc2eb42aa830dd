"""Rank correlation between shift scores and measured transfer, with a paired bootstrap interval.

The points are few (layers, or layer x shift-strength pairs), so the interval matters as much as
the estimate: :func:`spearman_with_ci` resamples the *pairs* with replacement and reports the
percentile interval of Spearman's rho over the resamples.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata
from tqdm.auto import tqdm

__all__ = ["spearman_with_ci"]


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho per row of ``x``, ``y`` ``(R, n)`` (average ranks for ties); NaN where a row
    is constant."""
    rx = rankdata(x, axis=1)  # (R, n)
    ry = rankdata(y, axis=1)
    rx = rx - rx.mean(1, keepdims=True)
    ry = ry - ry.mean(1, keepdims=True)
    denom = np.sqrt((rx**2).sum(1) * (ry**2).sum(1))  # (R,)
    num = (rx * ry).sum(1)
    out = np.full(x.shape[0], np.nan)
    ok = denom > 1e-12 * max(1.0, x.shape[1] ** 3)
    out[ok] = np.clip(num[ok] / denom[ok], -1.0, 1.0)
    return out


def spearman_with_ci(
    x,
    y,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    *,
    progress: bool = False,
    chunk: int = 500,
) -> tuple[float, float, float]:
    """Spearman's rho of paired values ``x``, ``y`` ``(n,)`` and a ``level`` percentile bootstrap
    interval over ``n_boot`` resamples of the pairs: ``(rho, low, high)``.

    Ties get average ranks. A constant ``x`` or ``y`` has no rank correlation: the result is
    ``(nan, nan, nan)`` with a ``RuntimeWarning``. Resamples that happen to be constant (all
    copies of one pair) are dropped from the interval; if more than half are, the interval is NaN
    with a warning.
    """
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"x and y must be paired (same length), got {x.size} and {y.size} values.")
    if x.size < 3:
        raise ValueError(f"need at least 3 pairs for a rank correlation with an interval, got {x.size}.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError(
            "x and y must be finite; drop the NaN/Inf pairs (e.g. layers without a score) first."
        )
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}; try 0.95.")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot!r}; try 2000.")
    rho = float(_rowwise_spearman(x[None], y[None])[0])
    if np.isnan(rho):
        warnings.warn(
            "spearman_with_ci: x or y is constant, so the rank correlation is undefined; returning NaN.",
            RuntimeWarning,
            stacklevel=2,
        )
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = []
    for start in tqdm(range(0, int(n_boot), chunk), desc="bootstrap", disable=not progress, leave=False):
        idx = rng.integers(0, x.size, size=(min(chunk, int(n_boot) - start), x.size))  # (R, n)
        draws.append(_rowwise_spearman(x[idx], y[idx]))
    boot = np.concatenate(draws)  # (n_boot,)
    valid = boot[~np.isnan(boot)]
    if valid.size < 0.5 * boot.size:
        warnings.warn(
            f"spearman_with_ci: {boot.size - valid.size} of {boot.size} resamples were constant; "
            "too few points for a bootstrap interval, returning NaN bounds.",
            RuntimeWarning,
            stacklevel=2,
        )
        return rho, float("nan"), float("nan")
    alpha = 0.5 * (1.0 - level)
    low, high = np.quantile(valid, [alpha, 1.0 - alpha])
    return rho, float(low), float(high)
