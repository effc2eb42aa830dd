"""A layer's maps at the concept level, and ``at_level`` to pick either level of a layer's maps.

Concept responsibilities are the summed responsibilities of a concept's components (renormalised
over the hierarchy's components), so the concept map's label is their argmax, its confidence their
maximum and its entropy their entropy (nats). Kinds that do not depend on the grouping (novelty;
``MapKind.grouping_invariant``) are copied; the others (the epistemic/aleatoric split) are only
computed for components (``NaN`` at concept level).
"""

from __future__ import annotations

import numpy as np
import torch

from ..activations.types import LayerActivations
from ..maps.layer_maps import LayerMaps, resolve_posterior
from ..maps.registry import MAPS
from .selection import ConceptSelection

__all__ = [
    "LEVELS",
    "at_level",
    "concept_layer_maps",
    "concept_point_values",
    "concept_point_values_many",
    "concept_values",
    "regrouped_layer_maps",
]

LEVELS = ("components", "concepts")


def concept_point_values(posterior, points, selection: ConceptSelection, chunk_size: int = 8192) -> dict:
    """``labels`` (int64), ``confidence`` and ``entropy`` (float64) ``(N,)`` of every point at the
    concept level. ``posterior``: ``B = 1`` ``MixturePosterior``; ``points``: ``(N, D)`` tensor,
    array or memmap."""
    return concept_point_values_many(posterior, points, [selection], chunk_size)[0]


def concept_point_values_many(posterior, points, selections, chunk_size: int = 8192) -> list[dict]:
    """:func:`concept_point_values` of several ``selections`` of one layer (e.g. one per
    criterion) in one pass over the points: the responsibilities are computed once per chunk."""
    groupings = [(sel.hierarchy.components, sel.hierarchy.membership(sel.k)) for sel in selections]
    return _grouped_values(posterior, points, groupings, chunk_size)


def _grouped_values(posterior, points, groupings, chunk_size: int = 8192) -> list[dict]:
    """:func:`concept_point_values` for each grouping ``(components (K̂,), member (K̂, k) 0/1)`` of
    the posterior's components, from one pass over the points."""
    groupings = [
        (
            torch.as_tensor(np.asarray(components), dtype=torch.long),
            torch.as_tensor(np.asarray(member, dtype=np.float64)),
        )
        for components, member in groupings
    ]
    outs = [{"labels": [], "confidence": [], "entropy": []} for _ in groupings]
    N = int(points.shape[0])
    for start in range(0, N, chunk_size):
        chunk = points[start : start + chunk_size]
        x = torch.as_tensor(np.ascontiguousarray(chunk), dtype=posterior.params.mean.dtype)
        resp = posterior.responsibilities(x)[0]  # (n, K)
        for out, (comps, member) in zip(outs, groupings, strict=True):
            r = resp[:, comps].double().cpu()  # (n, K̂)
            r = r / r.sum(1, keepdim=True).clamp_min(1e-300)
            rc = r @ member  # (n, k)
            conf, lab = rc.max(1)
            out["labels"].append(lab)
            out["confidence"].append(conf)
            out["entropy"].append(-torch.where(rc > 0, rc * torch.log(rc), torch.zeros_like(rc)).sum(1))
    return [{key: torch.cat(v) for key, v in out.items()} for out in outs]


def concept_values(posterior, acts: LayerActivations, selections) -> list[dict]:
    """:func:`concept_point_values_many` of all of ``acts``' points (in memory or on disk)."""
    return concept_point_values_many(resolve_posterior(posterior, acts), _points(acts), selections)


def _points(acts: LayerActivations):
    points = acts.points
    if isinstance(points, str) or hasattr(points, "__fspath__"):
        points = np.load(points, mmap_mode="r")
    return points


def _level_maps(
    component_maps: LayerMaps, acts: LayerActivations, vals: dict, weights, meta: dict
) -> LayerMaps:
    """The concept-level ``LayerMaps`` from the per-point concept ``vals`` and the component maps."""
    maps = {key: acts.to_maps(v) for key, v in vals.items()}  # each (I, H_l, W_l); labels -1 off-grid
    values = {}
    for kind, comp in component_maps.values.items():  # registered kinds keep the registry's order
        if kind in maps:
            values[kind] = maps[kind]
        elif kind in MAPS and MAPS[kind].grouping_invariant:
            values[kind] = comp
        else:  # only computed for components
            values[kind] = torch.full_like(comp, float("nan"), dtype=torch.float64)
    weights = torch.as_tensor(weights)
    return LayerMaps(
        name=component_maps.name,
        geometry=component_maps.geometry,
        values=values,
        weights=weights,
        active=torch.ones(int(weights.shape[0]), dtype=torch.bool),
        image_names=list(component_maps.image_names),
        meta={**component_maps.meta, "level": "concepts", **meta},
    )


def concept_layer_maps(
    posterior,
    acts: LayerActivations,
    selection: ConceptSelection,
    component_maps: LayerMaps,
    point_values: dict | None = None,
) -> LayerMaps:
    """The layer's maps at the concept level (same geometry and images as ``component_maps``);
    ``meta["level"] = "concepts"``, ``meta["component_to_concept"]`` maps canonical components.
    ``point_values``: this selection's :func:`concept_point_values` of ``acts``, if computed already."""
    vals = point_values if point_values is not None else concept_values(posterior, acts, [selection])[0]
    h, k = selection.hierarchy, selection.k
    meta = {
        "criterion": h.criterion,
        "component_to_concept": h.component_to_concept(k, int(component_maps.weights.shape[0])).tolist(),
    }
    return _level_maps(component_maps, acts, vals, h.weights @ h.membership(k), meta)


def regrouped_layer_maps(
    posterior, acts: LayerActivations, reference: LayerMaps, component_maps: LayerMaps
) -> LayerMaps:
    """The concept-level maps of new positions ``acts`` under the grouping of a run's saved concept
    maps ``reference`` (its ``meta["component_to_concept"]`` ``(K,)`` and concept ``weights``
    ``(k,)``), e.g. a finished run applied to new images: the same concepts, the new images' labels,
    confidence and entropy. Applied to the run's own positions it gives the run's concept maps."""
    c2c = np.asarray(reference.meta["component_to_concept"], dtype=np.int64)  # (K,), -1: left out
    K = int(component_maps.weights.shape[0])
    if c2c.shape != (K,):
        raise ValueError(
            f"layer {component_maps.name!r}: the concept grouping covers {c2c.size} components, the "
            f"maps have K = {K}; give the concept maps of the run whose posterior made these maps."
        )
    k = int(reference.weights.shape[0])
    comps = np.flatnonzero(c2c >= 0)
    (vals,) = _grouped_values(
        resolve_posterior(posterior, acts), _points(acts), [(comps, np.eye(k)[c2c[comps]])]
    )
    meta = {
        key: reference.meta[key] for key in ("criterion", "component_to_concept") if key in reference.meta
    }
    return _level_maps(component_maps, acts, vals, reference.weights.double(), meta)


def at_level(
    component_maps: LayerMaps, concept_maps: LayerMaps | None, level: str = "components"
) -> LayerMaps:
    """The maps to draw or score at ``level`` (``"components"`` or ``"concepts"``)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}.")
    if level == "components":
        return component_maps
    if concept_maps is None:
        raise ValueError("level='concepts' needs the layer's concept maps (concept_layer_maps).")
    return concept_maps
