"""A layer's cluster maps under the coupled model: every position of every image, neighbours coupled."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from .estimator import SpatialDPGMM

if TYPE_CHECKING:  # the maps stack is not needed to fit
    from ..activations.types import LayerActivations
    from ..maps.layer_maps import LayerMaps

__all__ = ["coupled_maps"]


def coupled_maps(maps: LayerMaps, model: SpatialDPGMM, acts: LayerActivations) -> LayerMaps:
    """``maps`` with ``labels``, ``confidence`` and ``entropy`` from the coupled ``q(z)`` of every
    position of ``acts`` (mean-field sweeps over each image's grid with the fitted globals fixed).

    ``epistemic``, ``aleatoric`` and ``novelty`` stay those of the uncoupled posterior (they are
    properties of the globals' uncertainty and the predictive density, not of the coupling);
    ``meta["coupling"]`` records the strength."""
    if not isinstance(model, SpatialDPGMM):
        raise ValueError(f"coupled maps need a fitted SpatialDPGMM, got {type(model).__name__}.")
    points = acts.points
    if isinstance(points, str) or hasattr(points, "__fspath__"):
        points = np.load(points, mmap_mode="r")
    points = torch.as_tensor(np.asarray(points)) if not isinstance(points, torch.Tensor) else points
    log_r = model.log_responsibilities_on_grid(points.float(), acts.index).double().cpu()  # (N, K)
    conf, labels = log_r.max(-1)
    r = log_r.exp()
    entropy = -torch.where(r > 0, r * log_r, torch.zeros_like(r)).sum(-1)
    return replace(
        maps,
        values={
            **maps.values,
            "labels": acts.to_maps(labels),
            "confidence": acts.to_maps(conf.exp()),
            "entropy": acts.to_maps(entropy),
        },
        meta={**maps.meta, "coupling": model.coupling},
    )
