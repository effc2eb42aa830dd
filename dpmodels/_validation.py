"""Checks at the public boundary: each error says what was expected, what came, and what to try."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["NotFittedError", "Param", "as_points", "check_device", "check_params", "check_positive_int"]


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
    if bool(torch.isfinite(t.sum())):  # NaN and Inf always reach the sum: one reduction clears finite data
        return t
    bad = ~torch.isfinite(t)  # the sum is NaN or Inf: a value is, or finite values overflowed it
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


@dataclass(frozen=True)
class Param:
    """The constraint on one estimator parameter (scikit-learn's ``_parameter_constraints`` idea):
    ``kind`` is ``"int"``, ``"number"``, ``"bool"``, ``"choice"``, ``"path"``, ``"device"``,
    ``"dict"`` or ``"any"``; ``low``/``high`` bound numbers (``open_low``/``open_high`` exclude the
    bound), ``choices`` lists the allowed values, ``none`` allows ``None``, ``unit`` names the
    unit in the message and ``hint`` says what to try. :meth:`check` raises one ``ValueError``
    saying what was expected, what came and what to try."""

    kind: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: tuple = ()
    none: bool = False
    unit: str = ""
    hint: str = ""

    def expected(self) -> str:
        """``"an integer >= 1"``, ``"> 0"``, ``"in [0, 1)"``, ``"one of (...)"``..."""
        if self.kind == "choice":
            return f"one of {self.choices}"
        unit = f" ({self.unit})" if self.unit else ""
        if self.kind in ("int", "number") and self.low is not None and self.high is not None:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"in {left}{self.low:g}, {self.high:g}{right}{unit}"
        if self.kind in ("int", "number") and self.low is not None:
            what = "an integer " if self.kind == "int" else ""
            return f"{what}{'>' if self.open_low else '>='} {self.low:g}{unit}"
        return {"int": "an integer", "number": "a number", "bool": "True or False", "path": "a file path",
                "dict": "a dict", "device": "'cpu', 'cuda' or 'cuda:N'"}.get(self.kind, "a value")  # fmt: skip

    def check(self, name: str, value) -> None:
        if value is None:
            if self.none or self.kind == "any":
                return
            self._fail(name, value)
        if self.kind == "device":
            check_device(value)
            return
        ok = {
            "int": lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool),
            "number": lambda v: (
                isinstance(v, (int, float, np.integer, np.floating))
                and not isinstance(v, bool)
                and not math.isnan(float(v))
            ),
            "bool": lambda v: isinstance(v, (bool, np.bool_)),
            "choice": lambda v: v in self.choices,
            "path": lambda v: isinstance(v, (str, Path)),
            "dict": lambda v: isinstance(v, dict),
            "any": lambda v: True,
        }[self.kind](value)
        if ok and self.kind in ("int", "number"):
            v = float(value)
            if self.low is not None and (v < self.low or (self.open_low and v == self.low)):
                ok = False
            if self.high is not None and (v > self.high or (self.open_high and v == self.high)):
                ok = False
        if not ok:
            self._fail(name, value)

    def _fail(self, name: str, value) -> None:
        verb = "lie" if self.expected().startswith("in ") else "be"
        hint = f"; {self.hint}" if self.hint else ""
        raise ValueError(f"{name} must {verb} {self.expected()}, got {value!r}{hint}.")


def check_params(values: dict, constraints: dict[str, Param]) -> None:
    """Check every entry of ``values`` that ``constraints`` names (one ``ValueError`` for the first
    that fails); names without a constraint are left to their own checks."""
    for name, value in values.items():
        if name in constraints:
            constraints[name].check(name, value)
