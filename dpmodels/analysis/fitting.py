"""Fit one DPGMM per layer, all layers in as few batched calls as possible.

Batching needs a common shape ``(N, D)``: every layer is fitted on the same number of positions
(a seeded subsample of ``fit_points``, fewer when a layer has fewer positions) and layers that
share ``D`` (e.g. all projected to ``pca_dim``) go into one :func:`dpmodels.fit_batched` call.
Another disjoint subsample of positions gives a held-out log-likelihood per layer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from ..activations.types import LayerActivations
from ..estimator import DPGMM, fit_batched

__all__ = ["LayerFit", "fit_layers"]

log = logging.getLogger(__name__)


@dataclass
class LayerFit:
    """A layer's fitted mixture and the positions it saw.

    ``fit_index``/``heldout_index`` index ``LayerActivations.points`` (sorted); ``heldout_loglik``
    is the mean posterior predictive log density per held-out position (nats; NaN when no position
    was left over); ``fit_seconds`` is the wall time of the batched call that fitted this layer
    together with ``batch_layers``."""

    name: str
    model: DPGMM
    fit_index: np.ndarray
    heldout_index: np.ndarray
    heldout_loglik: float
    fit_seconds: float
    batch_layers: tuple[str, ...]


def _read(acts: LayerActivations, index: np.ndarray) -> torch.Tensor:
    pts = acts.points
    if isinstance(pts, torch.Tensor):
        return pts[torch.from_numpy(index)].float()
    return torch.from_numpy(np.ascontiguousarray(pts[index], dtype=np.float32))


def split_positions(num_points: int, fit_points: int, heldout_points: int, rng: np.random.Generator):
    """Disjoint sorted index sets (fit, held-out); held-out gets at most a fifth when data are short."""
    perm = rng.permutation(num_points)
    n_held = min(heldout_points, num_points // 5)
    n_fit = min(fit_points, num_points - n_held)
    return np.sort(perm[:n_fit]), np.sort(perm[n_fit : n_fit + n_held])


def fit_layers(
    acts: dict[str, LayerActivations],
    *,
    fit_points: int = 20_000,
    heldout_points: int = 5_000,
    seed: int = 0,
    **dpgmm_kwargs,
) -> dict[str, LayerFit]:
    """Fit every layer of ``acts``; keyword arguments are those of :class:`dpmodels.DPGMM`.

    Returns the fits in the order of ``acts``."""
    if not acts:
        raise ValueError("fit_layers needs at least one layer; the layer selection matched nothing.")
    rng = np.random.default_rng(seed)
    splits = {}
    for name, a in acts.items():
        if a.num_points < 10:
            raise ValueError(
                f"layer {name!r} has only {a.num_points} positions; a mixture needs more data "
                "(use more images or keep every position)."
            )
        splits[name] = split_positions(a.num_points, fit_points, heldout_points, rng)
    n_common = min(len(fit) for fit, _ in splits.values())
    groups: dict[int, list[str]] = {}
    for name, a in acts.items():
        groups.setdefault(a.num_features, []).append(name)
    fits: dict[str, LayerFit] = {}
    for D, names in groups.items():
        data = []
        for name in names:
            fit_idx, held_idx = splits[name]
            if len(fit_idx) > n_common:  # common N for batching; the rest joins the held-out set
                keep = np.sort(rng.choice(len(fit_idx), n_common, replace=False))
                fit_idx = fit_idx[keep]
                splits[name] = (fit_idx, held_idx)
            data.append(_read(acts[name], fit_idx))
        log.info("fitting %d layer(s) with D=%d on %d positions each: %s", len(names), D, n_common, names)
        start = time.perf_counter()
        models = fit_batched(torch.stack(data), seed=seed, **dpgmm_kwargs)
        seconds = time.perf_counter() - start
        for name, model in zip(names, models, strict=True):
            fit_idx, held_idx = splits[name]
            held = model.score(_read(acts[name], held_idx).numpy()) if len(held_idx) else float("nan")
            fits[name] = LayerFit(name, model, fit_idx, held_idx, float(held), seconds, tuple(names))
    return {name: fits[name] for name in acts}
