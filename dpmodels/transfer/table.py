"""Per-layer shift table: hold out source images, fit each layer's source positions, score the rest.

Held-out source positions come from whole held-out *images* (positions of one image are strongly
correlated, so holding out positions would flatter the fit). The same seed holds out the same
images in every layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..activations.types import FeatureTransform, LayerActivations
from ..estimator import DPGMM
from .scores import _layer_info, as_posterior, shift_scores

__all__ = ["fit_layers", "heldout_split", "layer_shift_table"]


def heldout_split(
    acts: LayerActivations, heldout_fraction: float = 0.2, seed: int = 0
) -> tuple[Tensor, Tensor]:
    """``(fit_rows, heldout_rows)``: int64 row indices into ``acts.points``, holding out a
    ``heldout_fraction`` of the images (at least one, never all) chosen by ``seed``."""
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction!r}; try 0.2.")
    images = torch.unique(acts.index[:, 0].long())  # (I',) images that have points
    n_held = int(round(heldout_fraction * len(images)))
    if len(images) < 2 or not 0 < n_held < len(images):
        raise ValueError(
            f"layer {acts.name!r}: holding out {heldout_fraction} of {len(images)} image(s) leaves "
            f"{n_held} held out; the split is by image, so extract at least "
            f"{max(2, math.ceil(1 / min(heldout_fraction, 1 - heldout_fraction)))} images or change "
            "heldout_fraction."
        )
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    held_images = images[order[:n_held]]
    is_held = torch.isin(acts.index[:, 0].long(), held_images)  # (N,)
    return torch.nonzero(~is_held).flatten(), torch.nonzero(is_held).flatten()


def fit_layers(
    source_acts: Mapping[str, LayerActivations],
    heldout_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = False,
    **dpgmm_kwargs,
) -> dict[str, DPGMM]:
    """One :class:`DPGMM` per layer, fitted on the positions that :func:`heldout_split` (same
    ``heldout_fraction`` and ``seed``) does not hold out. ``dpgmm_kwargs`` go to ``DPGMM``."""
    fits = {}
    for name, acts in tqdm(source_acts.items(), desc="fit layers", disable=not progress):
        fit_rows, _ = heldout_split(acts, heldout_fraction, seed)
        fits[name] = DPGMM(**{"seed": seed, **dpgmm_kwargs}).fit(acts.tensor()[fit_rows])
    return fits


def _same_transform(a: FeatureTransform | None, b: FeatureTransform | None) -> bool:
    if a is None or b is None:
        return a is b
    fields = ("mean", "scale", "pca_mean", "components")
    for f in fields:
        x, y = getattr(a, f), getattr(b, f)
        if (x is None) != (y is None) or (x is not None and not torch.equal(x, y)):
            return False
    return a.channels == b.channels


def _check_pair(key: str, src: LayerActivations, tgt: LayerActivations) -> None:
    (s_name, s_ch), (t_name, t_ch) = _layer_info(src), _layer_info(tgt)
    if s_name != t_name or s_ch != t_ch or src.num_features != tgt.num_features:
        raise ValueError(
            f"entry {key!r}: source is layer {s_name!r} ({s_ch} channels, D = {src.num_features}) but "
            f"target is layer {t_name!r} ({t_ch} channels, D = {tgt.num_features}); extract the same "
            "layers of the same network from both data sets."
        )
    if not _same_transform(src.transform, tgt.transform):
        raise ValueError(
            f"layer {key!r}: the target points were standardised/projected differently from the source; "
            "extract the target with the source's transforms so both live in one coordinate system."
        )


def layer_shift_table(
    source_acts: Mapping[str, LayerActivations],
    target_acts: Mapping[str, LayerActivations],
    fits: Mapping[str, DPGMM] | None = None,
    heldout_fraction: float = 0.2,
    seed: int = 0,
    *,
    novelty_quantile: float = 0.01,
    min_points: int = 50,
    usage_threshold: float = 0.02,
    progress: bool = False,
    **dpgmm_kwargs,
) -> pd.DataFrame:
    """One row per layer (in ``source_acts`` order) with all :func:`shift_scores`.

    ``fits[layer]`` must have been fitted on the positions :func:`heldout_split` keeps for fitting
    (as :func:`fit_layers` does, same ``heldout_fraction`` and ``seed``); with ``fits=None`` they
    are fitted here with ``dpgmm_kwargs``. Layers must match by key, layer name, channel count,
    ``D`` and transform. Columns: ``layer, channels, D, n_fit, n_heldout, n_target, n_active``,
    the scalar scores, ``exclusive_source``, ``exclusive_target`` (lists of cluster indices).
    """
    if set(source_acts) != set(target_acts):
        raise ValueError(
            f"source and target must hold the same layers; only in source: "
            f"{sorted(set(source_acts) - set(target_acts))}, only in target: "
            f"{sorted(set(target_acts) - set(source_acts))}."
        )
    for key in source_acts:
        _check_pair(key, source_acts[key], target_acts[key])
    if fits is None:
        fits = fit_layers(source_acts, heldout_fraction, seed, progress, **dpgmm_kwargs)
    missing = [k for k in source_acts if k not in fits]
    if missing:
        raise ValueError(f"no fit for layer(s) {missing}; fits has {sorted(fits)}. Use fit_layers(...).")
    rows = []
    for key, src in tqdm(source_acts.items(), desc="shift scores", disable=not progress):
        fit_rows, held_rows = heldout_split(src, heldout_fraction, seed)
        post = as_posterior(fits[key])
        if post.num_points != len(fit_rows) or post.params.num_features != src.num_features:
            raise ValueError(
                f"layer {key!r}: the fit saw {post.num_points} points of D = {post.params.num_features}, "
                f"but the split (heldout_fraction={heldout_fraction}, seed={seed}) keeps {len(fit_rows)} "
                f"of D = {src.num_features} for fitting; fit with fit_layers(source_acts, "
                f"{heldout_fraction}, {seed}) so held-out positions are truly unseen."
            )
        scores = shift_scores(
            post,
            src.tensor()[held_rows],
            target_acts[key],
            novelty_quantile=novelty_quantile,
            min_points=min_points,
            usage_threshold=usage_threshold,
        )
        _, channels = _layer_info(src)
        rows.append(
            {
                "layer": key,
                "channels": channels,
                "D": src.num_features,
                "n_fit": len(fit_rows),
                "n_heldout": scores["n_heldout"],
                "n_target": scores["n_target"],
                "n_active": int(post.n_active[0]),
                **{k: v for k, v in scores.items() if isinstance(v, float)},
                "exclusive_source": scores["exclusive_clusters"]["source"],
                "exclusive_target": scores["exclusive_clusters"]["target"],
            }
        )
    return pd.DataFrame(rows)
