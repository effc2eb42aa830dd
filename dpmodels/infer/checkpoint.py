"""Checkpoint and resume for the natural-gradient engine.

A fit checkpoint is a ``torch.save`` file holding only tensors, numbers, strings and plain
containers (dicts, lists), written atomically (temporary file, ``fsync``, ``os.replace``) and read
back with ``torch.load(..., weights_only=True)``, which refuses any pickle that would run code.
It carries a *fingerprint* of the data (shape, dtype and a hash of a strided sample of rows) and of
every setting that shapes the fit (prior, base measure, truncation, engine options, seed, chunk
size, dtype, device type). A checkpoint whose fingerprint differs from the current call is never
resumed nor overwritten: the fit stops with :class:`FitCheckpointError`, naming the settings that
differ.

Resuming is exact: the engine saves everything that affects the future (variational parameters,
ELBO history, iteration and phase counters, the minibatch permutation and position, the random
generator's state, merge bookkeeping), so on CPU a fit killed at any moment and started again
with the same call ends with the same numbers, bit for bit, as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import time
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from ..io import atomic_path
from ..models.dpgmm import ModelSpec
from ..models.family import VariationalParams

__all__ = ["FORMAT", "FitCheckpointError", "FitCheckpointer", "fingerprint", "params_from_state"]

FORMAT = "dpmodels-fit-checkpoint-v1"
_SAMPLE_ROWS = 512


class FitCheckpointError(ValueError):
    """A fit checkpoint exists but cannot be resumed (corrupt, unsafe, or from another fit)."""


def _tensor_digest(h: hashlib._Hash, t: Tensor) -> None:
    t = t.detach().cpu().contiguous()
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def fingerprint(data, spec: ModelSpec, seed: int, options, chunk: int, dtype: torch.dtype, device) -> dict:
    """What a checkpoint must match to be resumed: a dict of strings.

    ``data (B, N, D)`` (tensor or :class:`~dpmodels.data.PointSource`) is summarised by its shape
    and a SHA-256 of up to 512 rows taken at even strides (cheap on files of any size); settings by
    their values; the base measure by a hash of its tensors. ``progress`` is left out: it does not
    change the fit.
    """
    B, N, D = data.shape
    rows = torch.linspace(0, N - 1, min(N, _SAMPLE_ROWS)).round().long().unique()  # (n,) strided rows
    h = hashlib.sha256()
    _tensor_digest(h, data[:, rows])
    base = hashlib.sha256()
    for t in (spec.base.mean, spec.base.mean_precision, spec.base.dof, spec.base.scale):
        _tensor_digest(base, t)
    opts = {k: v for k, v in dataclasses.asdict(options).items() if k != "progress"}
    return {
        "data": f"shape={tuple(data.shape)} rows={h.hexdigest()[:32]}",
        "prior": repr(spec.prior),
        "base_measure": f"{spec.base.covariance}:{base.hexdigest()[:32]}" + _lowrank_settings(spec.base),
        "truncation": str(spec.truncation),
        "options": json.dumps(opts, sort_keys=True),
        "seed": str(int(seed)),
        "chunk_size": str(int(chunk)),
        "dtype": str(dtype),
        "device": torch.device(device).type,
    }


def _lowrank_settings(base) -> str:
    """The low-rank prior's rank and loading precision (empty for the other types, whose
    fingerprints stay as they were)."""
    if base.covariance != "lowrank":
        return ""
    return f":rank={base.rank}:loading_precision={float(base.loading_precision)!r}"


def params_to_state(params: VariationalParams) -> dict:
    """Variational parameters as a plain dict of CPU tensors (plus the covariance type)."""
    return {"covariance": params.covariance, **{k: v.cpu() for k, v in params.tensors().items()}}


def params_from_state(state: dict, device) -> VariationalParams:
    """Inverse of :func:`params_to_state`, on ``device``."""
    tensors = {k: v.to(device) for k, v in state.items() if k != "covariance"}
    return VariationalParams(state["covariance"], **tensors)


class FitCheckpointer:
    """Saves an engine's state to ``path`` at most every ``every`` seconds (``0``: every step).

    :meth:`load` returns the saved state when ``path`` exists and matches ``fingerprint`` (raising
    :class:`FitCheckpointError` when it does not, or when it is unreadable; the file is left
    untouched either way), ``None`` when there is no file.
    """

    def __init__(self, path: str | os.PathLike, every: float, fingerprint: dict):
        if not every >= 0:
            raise ValueError(f"checkpoint_every must be >= 0 seconds, got {every!r}; try 30.0.")
        self.path, self.every, self.fingerprint = Path(path), float(every), fingerprint
        if self.path.exists() and self.path.is_dir():
            raise FitCheckpointError(
                f"checkpoint path {str(self.path)!r} is a directory; pass a file path such as "
                f"{str(self.path / 'fit.ckpt')!r}."
            )
        self._last = time.monotonic()
        self.saves = 0

    def load(self) -> dict | None:
        if not self.path.exists():
            return None
        advice = "delete it to start the fit afresh, or pass another checkpoint path"
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise FitCheckpointError(
                f"refused to load fit checkpoint {str(self.path)!r}: it holds objects other than tensors "
                f"and plain containers, which could run code when unpickled ({err}); {advice}."
            ) from err
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
            raise FitCheckpointError(
                f"fit checkpoint {str(self.path)!r} is corrupt or truncated ({type(err).__name__}: {err}); "
                f"the file was left as it is: {advice}."
            ) from err
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise FitCheckpointError(
                f"{str(self.path)!r} is not a dpmodels fit checkpoint (expected format {FORMAT!r}); {advice}."
            )
        saved = state.get("fingerprint", {})
        diff = sorted(
            k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k)
        )
        if diff:
            detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {self.fingerprint.get(k)!r}" for k in diff)
            raise FitCheckpointError(
                f"fit checkpoint {str(self.path)!r} belongs to another fit (different {', '.join(diff)}: "
                f"{detail}). It was not overwritten: {advice}."
            )
        return state["state"]

    def due(self) -> bool:
        """Whether ``every`` seconds have passed since the last save (or since the start)."""
        return time.monotonic() - self._last >= self.every

    def save(self, state: dict) -> None:
        """Write ``state`` atomically: a kill at any moment leaves the old file or the new one."""
        with atomic_path(self.path) as tmp:
            torch.save({"format": FORMAT, "fingerprint": self.fingerprint, "state": state}, tmp)
        self._last = time.monotonic()
        self.saves += 1

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
