"""Checks at the public boundary: each error says what was expected, what came, and what to try."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["NotFittedError", "as_points", "check_device", "check_positive_int"]


class NotFittedError(ValueError, AttributeError):
    """A method that needs a fitted estimator was called before ``fit``."""


def as_points(X, name: str = "X", dtype: torch.dtype = torch.float32, min_points: int = 2) -> Tensor:
    """``X`` (NumPy array, torch tensor or nested list) as a finite ``(N, D)`` tensor."""
    if isinstance(X, Tensor):
        t = X.detach()
    else:
        try:
            arr = np.asarray(X)
        except Exception as err:  # noqa: BLE001 - anything unconvertible gets the same advice
            raise ValueError(f"{name} must be an array of shape (N, D); got {type(X).__name__}.") from err
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise ValueError(
                f"{name} must hold numbers, got dtype {arr.dtype}; convert it with np.asarray(X, dtype=float)."
            )
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dim() != 2:
        hint = "use X.reshape(-1, 1) for one feature" if t.dim() == 1 else "flatten all but the feature axis"
        raise ValueError(f"{name} must have shape (N, D) (2-D), got shape {tuple(t.shape)}; {hint}.")
    N, D = t.shape
    if D == 0:
        raise ValueError(f"{name} has no features (shape {tuple(t.shape)}); D must be at least 1.")
    if N < min_points:
        raise ValueError(f"{name} needs at least {min_points} points (rows), got {N}; pass more data.")
    t = t.to(dtype)
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        rows = torch.nonzero(bad.any(1)).flatten()[:5].tolist()
        raise ValueError(
            f"{name} contains {int(bad.sum())} NaN or Inf values (first rows: {rows}); "
            "drop or impute them before fitting."
        )
    return t


def check_positive_int(value, name: str, hint: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}; {hint}.")
    return int(value)


def check_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but no CUDA GPU is available here; use device='cpu'."
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}.")
    return dev
