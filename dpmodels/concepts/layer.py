"""Concepts of one fitted layer in the main job: hierarchy, number of concepts, concept maps and
their scores against the masks, for the kept criterion and (scored only) the others."""

from __future__ import annotations

import time

import numpy as np

from ..activations.types import LayerActivations
from ..maps.layer_maps import LayerMaps
from .hierarchy import CRITERIA
from .levels import concept_layer_maps, concept_values
from .selection import ConceptSelection, concept_draws, select_concepts

__all__ = ["CONCEPT_METRICS", "layer_concepts"]

CONCEPT_METRICS = (
    "ari",
    "nmi",
    "miou",
    "matched_accuracy",
    "k_error",
    "entropy_auroc",
    "ece",
    "entropy_auroc_majority",
    "ece_majority",
    "majority_accuracy",
)


def _score(cmaps: LayerMaps, sel: ConceptSelection, masks) -> dict:
    row = {
        "k": int(sel.k),
        "k_interval": [float(sel.k_interval[0]), float(sel.k_interval[1])],
        "k_components": sel.hierarchy.num_components,
        "mean_entropy": float(np.nanmean(cmaps.entropy.numpy())),
    }
    if masks is not None:
        from ..evaluation import evaluate_layer

        ev = evaluate_layer(cmaps, masks, k_hat=sel.k)
        row.update({k: ev[k] for k in CONCEPT_METRICS if k in ev})
    return row


def layer_concepts(
    fit,
    acts: LayerActivations,
    maps: LayerMaps,
    fit_points,
    masks=None,
    *,
    criteria: tuple[str, ...] = ("bhattacharyya", "entropy"),
    num_draws: int = 32,
    draw_points: int = 4000,
    seed: int = 0,
) -> tuple[dict, LayerMaps, ConceptSelection]:
    """The ``"concepts"`` block of a layer's metrics, its concept maps and selection.

    ``fit``: the layer's fitted ``DPGMM`` (or ``B = 1`` posterior); ``fit_points``: the positions it
    was fitted on ``(N, D)`` (the hierarchy is built from their responsibilities); ``criteria``: the
    first draws the maps, the others are scored under ``"alternatives"``."""
    criteria = tuple(criteria)
    if not criteria or any(c not in CRITERIA for c in criteria):
        raise ValueError(f"criteria must be a non-empty sequence of {CRITERIA}, got {criteria!r}.")
    post = getattr(fit, "posterior_", fit)
    start = time.perf_counter()
    out, kept = {}, None
    draws = concept_draws(post, fit_points, num_draws=num_draws, draw_points=draw_points, seed=seed)
    selections = [  # the posterior draws do not depend on the criterion: drawn once
        select_concepts(
            post,
            fit_points,
            criterion=crit,
            num_draws=num_draws,
            draw_points=draw_points,
            seed=seed,
            draws=draws,
        )
        for crit in criteria
    ]
    values = concept_values(post, acts, selections)  # one pass over the positions for all criteria
    for crit, sel, vals in zip(criteria, selections, values, strict=True):
        cmaps = concept_layer_maps(post, acts, sel, maps, point_values=vals)
        row = _score(cmaps, sel, masks)
        if kept is None:
            kept = (cmaps, sel)
            out = {"criterion": crit, **row}
        else:
            out.setdefault("alternatives", {})[crit] = row
    out["seconds"] = time.perf_counter() - start
    return out, kept[0], kept[1]
