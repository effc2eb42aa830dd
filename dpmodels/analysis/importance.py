"""``importance=true``: concept importance for every layer of a run, into ``importance.csv``
(and ``importance_per_image.csv``) and ``figures/importance_<layer>_class<c>.png``."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd
from torch import nn

from ..concepts.importance import concept_importance, summarize_importance
from ..data.images import ImageSet
from ..io import atomic_path
from .outputs import layer_file

__all__ = ["run_importance"]

log = logging.getLogger(__name__)


def run_importance(
    model: nn.Module,
    images: ImageSet,
    fits: Mapping,
    *,
    out_dir: str | Path | None = None,
    classes: Sequence[int] | None = None,
    sobol_masks: int = 16,
    max_images: int = 16,
    seed: int = 0,
    device: str = "cpu",
    figure: bool = True,
    dpi: int = 110,
    enabled: bool = True,
) -> pd.DataFrame:
    """Concept importance of each layer in ``fits`` (``{layer: LayerFitFile}``) on the first
    ``max_images`` images; returns the ``importance.csv`` table (see
    :func:`~dpmodels.concepts.importance.summarize_importance`) and, with ``out_dir``, writes it,
    the per-image scores and one figure per layer and class there."""
    x = images.images[:max_images]
    per_image, figures = [], []
    for layer, fit in fits.items():
        t0 = time.perf_counter()
        frame = concept_importance(
            model, x, layer, fit, classes=classes, sobol_masks=sobol_masks, seed=seed, device=device
        )
        log.info("importance of layer %r: %d scores in %.1f s", layer, len(frame), time.perf_counter() - t0)
        per_image.append(frame)
        figures.append((layer, frame))
    per_image_all = pd.concat(per_image, ignore_index=True)
    summary = summarize_importance(per_image_all)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(out_dir / "importance.csv", suffix=".csv") as tmp:
            summary.to_csv(tmp, index=False)
        with atomic_path(out_dir / "importance_per_image.csv", suffix=".csv") as tmp:
            per_image_all.to_csv(tmp, index=False)
        if figure:
            from ..viz.importance import plot_concept_importance
            from ..viz.maps import save_figure

            for layer, frame in figures:
                for c in sorted(frame["class"].unique()):
                    rows = summary[(summary["layer"] == layer) & (summary["class"] == c)]
                    fig = plot_concept_importance(
                        x, frame.attrs["labels"], frame.attrs["confidence"], frame.attrs["geometry"], rows,
                        title=f"{layer}, class {c}: logit drop when a concept is removed (95 % t interval)",
                    )  # fmt: skip
                    save_figure(
                        fig, out_dir / "figures" / f"importance_{layer_file(layer)}_class{c}.png", dpi=dpi
                    )
    return summary
