"""Evaluate a layer's maps (or any per-point labelling of its positions) against region masks,
and gather results into a table (layer x method x metric)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..activations.types import LayerActivations, LayerGeometry
from ..data.images import ImageSet
from ..maps.layer_maps import LayerMaps
from ..maps.resample import mask_at_positions, upsample_map
from .metrics import evaluate_labels

__all__ = ["RESOLUTIONS", "evaluate_layer", "evaluate_point_labels", "evaluation_table"]

RESOLUTIONS = ("input", "positions")


def _masks(masks, geometry: LayerGeometry, num_images: int) -> Tensor:
    if isinstance(masks, ImageSet):
        if masks.masks is None:
            raise ValueError(f"image set {masks.name!r} has no masks; evaluation needs ground-truth regions.")
        masks = masks.masks
    m = torch.as_tensor(masks)
    if m.is_floating_point() or m.dim() != 3:
        raise ValueError(f"masks must be integer labels shaped (I, H, W), got {m.dtype} {tuple(m.shape)}.")
    expected = (num_images, *geometry.input_size)
    if tuple(m.shape) != expected:
        raise ValueError(
            f"masks have shape {tuple(m.shape)} but the layer's maps cover {num_images} images of size "
            f"{tuple(geometry.input_size)}, i.e. {expected}; pass the masks of the extracted images."
        )
    if bool((m < -1).any()):
        raise ValueError("mask labels must be >= 0, or -1 for unlabelled pixels.")
    return m.long()


def _evaluate(geometry, label_map, entropy_map, conf_map, masks, resolution, k_hat) -> dict:
    if resolution not in RESOLUTIONS:
        raise ValueError(
            f"resolution must be one of {RESOLUTIONS}, got {resolution!r}; 'input' is the headline."
        )
    masks = _masks(masks, geometry, int(label_map.shape[0]))
    if resolution == "input":
        truth = masks
        label_map = upsample_map(label_map, geometry, "nearest")
        entropy_map = None if entropy_map is None else upsample_map(entropy_map, geometry, "bilinear")
        conf_map = None if conf_map is None else upsample_map(conf_map, geometry, "bilinear")
    else:
        truth = mask_at_positions(masks, geometry)

    def np_(t):
        return None if t is None else t.numpy()

    out = evaluate_labels(
        label_map.numpy(), truth.numpy(), entropy=np_(entropy_map), confidence=np_(conf_map), k_hat=k_hat
    )
    out["resolution"] = resolution
    return out


def evaluate_layer(maps: LayerMaps, masks, *, resolution: str = "input", k_hat: int | None = None) -> dict:
    """Metrics of a layer's DPGMM maps against ``masks`` (``(I, H, W)`` tensor or an ``ImageSet``).

    ``k_hat`` defaults to the posterior's number of active clusters. See
    :func:`dpmodels.evaluation.metrics.evaluate_labels` for the returned keys."""
    k_hat = maps.n_active if k_hat is None else k_hat
    return _evaluate(maps.geometry, maps.labels, maps.entropy, maps.confidence, masks, resolution, k_hat) | {
        "layer": maps.name
    }


def evaluate_point_labels(
    acts: LayerActivations,
    labels,
    masks,
    *,
    entropy=None,
    confidence=None,
    k_hat: int | None = None,
    resolution: str = "input",
) -> dict:
    """Metrics of any labelling of ``acts``'s points: ``labels`` ``(N,)`` int (and optional
    ``entropy``/``confidence`` ``(N,)``) are scattered to maps and evaluated like ``evaluate_layer``."""

    def to_map(v, integer: bool):
        if v is None:
            return None
        t = torch.as_tensor(np.asarray(v))
        return acts.to_maps(t.long() if integer else t.double())  # (I, H_l, W_l)

    out = _evaluate(
        acts.geometry,
        to_map(labels, True),
        to_map(entropy, False),
        to_map(confidence, False),
        masks,
        resolution,
        k_hat,
    )
    return out | {"layer": acts.name}


def evaluation_table(results: Iterable[Mapping] | Mapping) -> pd.DataFrame:
    """A ``layer x method`` table of scalar metrics from result dicts (each with ``"layer"`` and
    ``"method"`` keys, e.g. ``compare_methods`` rows), or from ``{(layer, method): result}``.
    Non-scalar entries (``per_image``) are dropped; the index is ``(layer, method)``."""
    if isinstance(results, Mapping):
        rows = [dict(r, layer=k[0], method=k[1]) for k, r in results.items()]
    else:
        rows = [dict(r) for r in results]
    if not rows:
        raise ValueError("no results to tabulate; pass evaluate_layer / compare_methods outputs.")
    for r in rows:
        if "layer" not in r or "method" not in r:
            raise ValueError(f"each result needs 'layer' and 'method' keys, got keys {sorted(r)}.")
    scalar = [{k: v for k, v in r.items() if np.isscalar(v) or v is None} for r in rows]
    return pd.DataFrame(scalar).set_index(["layer", "method"])
