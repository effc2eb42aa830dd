"""Fitting a layer's :class:`~dpmodels.activations.types.FeatureTransform` from streamed moments.

Extraction sees a layer's points one batch at a time (possibly far more than fit in memory), so the
transform is fitted from first and second moments accumulated in float64 around a shift (the first
batch's mean, which avoids cancellation when a channel's mean is large next to its spread): memory
``O(C^2)`` whatever the number of points. Standardisation uses the population std (``ddof=0``);
PCA is the eigendecomposition of the covariance of the (standardised) points, which is exactly what
an SVD-based PCA of the same points returns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from .store import RowWriter, read_rows
from .types import FeatureTransform, LayerActivations

__all__ = [
    "BLOCK_BYTES",
    "CONSTANT_TOL",
    "Moments",
    "apply_blocks",
    "apply_transform",
    "check_transforms",
    "fit_transform",
    "transform_file",
]

log = logging.getLogger("dpmodels.activations")

BLOCK_BYTES = 32 * 2**20  # blocks of the apply passes hold about this many bytes of input
CONSTANT_TOL = 1e-6  # a channel whose std is below CONSTANT_TOL * max(1, |mean|) counts as constant


class Moments:
    """Running count, mean and covariance of ``(n, C)`` batches."""

    def __init__(self, channels: int):
        self.channels = channels
        self.count = 0
        self.shift: Tensor | None = None  # (C,) float64
        self.sum = torch.zeros(channels, dtype=torch.float64)  # (C,) sum of (x - shift)
        self.outer = torch.zeros(channels, channels, dtype=torch.float64)  # (C, C) sum of outer products

    def update(self, x: Tensor) -> None:
        """Add a batch ``x``: ``(n, C)``."""
        if x.shape[0] == 0:
            return
        z = x.detach().to("cpu", torch.float64)
        if self.shift is None:
            self.shift = z.mean(0)
        z = z - self.shift  # (n, C)
        self.count += z.shape[0]
        self.sum += z.sum(0)
        self.outer += z.T @ z  # (C, C)

    @property
    def mean(self) -> Tensor:
        """``(C,)`` float64."""
        return self.shift + self.sum / self.count

    @property
    def covariance(self) -> Tensor:
        """``(C, C)`` float64 population covariance."""
        m = self.sum / self.count  # (C,) mean of the shifted points
        cov = self.outer / self.count - torch.outer(m, m)
        return 0.5 * (cov + cov.T)

    def merged(self, group) -> Moments:
        """The moments of the points of every rank of ``group`` (a
        :class:`~dpmodels.distributed.DataParallel`) together, re-centred at rank 0's mean."""
        shift = self.shift if self.shift is not None else torch.zeros(self.channels, dtype=torch.float64)
        pivot = self.mean if group.rank == 0 else torch.zeros(self.channels, dtype=torch.float64)
        (pivot,) = group.all_reduce(pivot)
        d = shift - pivot  # (C,) this rank's shift relative to the common pivot
        n = float(self.count)
        total = self.sum + n * d
        outer = self.outer + torch.outer(d, self.sum) + torch.outer(self.sum, d) + n * torch.outer(d, d)
        count, total, outer = group.all_reduce(torch.tensor([n], dtype=torch.float64), total, outer)
        out = Moments(self.channels)
        out.count, out.shift, out.sum, out.outer = int(count.item()), pivot, total, outer
        return out


def fit_transform(
    moments: Moments, standardize: bool, pca_dim: int | None, layer: str = "layer"
) -> tuple[FeatureTransform | None, dict]:
    """The transform for ``standardize`` / ``pca_dim`` (``None`` if neither) and notes for the
    layer's ``meta``: ``constant_channels`` (indices whose std was floored to 1) and
    ``pca_dim_requested`` when ``pca_dim >= C`` was reduced to ``C``."""
    if not standardize and pca_dim is None:
        return None, {}
    if moments.count < 2:
        raise ValueError(
            f"layer {layer!r}: standardize/pca_dim need at least 2 points, got {moments.count}; "
            "extract more images or positions."
        )
    C = moments.channels
    notes: dict = {}
    mean = moments.mean  # (C,)
    cov = moments.covariance  # (C, C)
    transform = FeatureTransform(channels=C)
    if standardize:
        std = cov.diagonal().clamp(min=0).sqrt()  # (C,)
        constant = std <= CONSTANT_TOL * mean.abs().clamp(min=1.0)
        scale = torch.where(constant, torch.ones_like(std), std)
        transform.mean, transform.scale = mean.float(), scale.float()
        notes["constant_channels"] = torch.nonzero(constant).flatten().tolist()
        if notes["constant_channels"]:
            log.info(
                "layer %r: %d constant channels (std floored to 1).", layer, len(notes["constant_channels"])
            )
        cov = cov / torch.outer(scale, scale)  # covariance of the standardised points
        mean = torch.zeros(C, dtype=torch.float64)
    if pca_dim is not None:
        d = int(pca_dim)
        if d >= C:
            log.info("layer %r: pca_dim=%d >= %d channels; keeping all %d components.", layer, d, C, C)
            notes["pca_dim_requested"] = d
            d = C
        evals, evecs = torch.linalg.eigh(cov)  # ascending eigenvalues, (C,), (C, C) columns
        order = torch.argsort(evals, descending=True)[:d]
        components = evecs[:, order].T  # (d, C)
        pivot = components.abs().argmax(1)  # a deterministic sign: largest loading positive
        components = components * torch.sign(components.gather(1, pivot[:, None]))
        total = evals.clamp(min=0).sum()
        ratio = evals[order].clamp(min=0) / total if total > 0 else torch.zeros(d, dtype=torch.float64)
        transform.pca_mean = mean.float()
        transform.components = components.float().contiguous()
        transform.explained_variance_ratio = ratio.float()
    return transform, notes


def check_transforms(transforms, layers, channels: dict[str, int]) -> dict[str, FeatureTransform]:
    """``transforms`` restricted to ``layers``, checked to cover them with matching channel counts."""
    missing = [n for n in layers if n not in transforms]
    if missing:
        raise ValueError(f"transforms has no entry for layers {missing}; it covers {list(transforms)}.")
    for n in layers:
        t = transforms[n]
        if not isinstance(t, FeatureTransform) or t.channels != channels[n]:
            got = t.channels if isinstance(t, FeatureTransform) else type(t).__name__
            raise ValueError(
                f"transforms[{n!r}] must be a FeatureTransform for {channels[n]} channels, got {got}; "
                "pass the .transform of the same layer extracted from the same model."
            )
    return {n: transforms[n] for n in layers}


def apply_blocks(points: Tensor, transform: FeatureTransform) -> Tensor:
    """``transform`` applied to an in-memory ``(N, C)`` tensor block by block -> ``(N, D)``."""
    rows = max(1, BLOCK_BYTES // (4 * points.shape[1]))
    return torch.cat([transform.apply(points[i : i + rows]) for i in range(0, len(points), rows)])


def transform_file(raw: Path, final: Path, transform: FeatureTransform, progress: bool) -> None:
    """Second pass: ``raw`` ``(N, C)`` file -> ``final`` ``(N, D)`` file, block by block; deletes ``raw``."""
    head = np.load(raw, mmap_mode="r")
    N, C = head.shape
    del head
    writer = RowWriter(final, (N, transform.out_features), np.float32)
    rows = max(1, BLOCK_BYTES // (4 * C))
    for i in tqdm(range(0, N, rows), desc=f"transform {final.stem}", disable=not progress):
        block = torch.from_numpy(read_rows(raw, i, min(i + rows, N)))  # (rows, C)
        writer.write(transform.apply(block).numpy())
    writer.close()
    raw.unlink()


def apply_transform(
    acts: LayerActivations | Mapping[str, LayerActivations],
    transforms: FeatureTransform | Mapping[str, FeatureTransform],
) -> LayerActivations | dict[str, LayerActivations]:
    """Map raw activations (extracted without a transform) into the coordinates of fitted
    ``transforms`` (e.g. a source data set's): one ``LayerActivations`` with one ``FeatureTransform``,
    or dicts keyed by layer. The result is in memory (``(N, D)`` tensor), read block by block from a
    store. To stream a large target data set to disk, use ``extract(..., transforms=..., store=...)``."""
    if isinstance(acts, LayerActivations):
        if not isinstance(transforms, FeatureTransform):
            transforms = (
                transforms[acts.name]
                if isinstance(transforms, Mapping) and acts.name in transforms
                else transforms
            )
        return _apply_one(acts, transforms)
    if not isinstance(transforms, Mapping):
        raise ValueError("for a dict of layers, transforms must be a dict {layer: FeatureTransform}.")
    done = [n for n, a in acts.items() if a.transform is not None]
    if done:
        raise ValueError(
            f"layers {done} were already transformed at extraction; apply_transform needs raw activations "
            "(extract without standardize/pca_dim) or extract with transforms= directly."
        )
    check_transforms(transforms, list(acts), {n: int(a.points.shape[1]) for n, a in acts.items()})
    return {n: _apply_one(a, transforms[n]) for n, a in acts.items()}


def _apply_one(acts: LayerActivations, transform) -> LayerActivations:
    if not isinstance(transform, FeatureTransform):
        raise ValueError(f"layer {acts.name!r}: expected a FeatureTransform, got {type(transform).__name__}.")
    if acts.transform is not None:
        raise ValueError(
            f"layer {acts.name!r} was already transformed at extraction; apply_transform needs raw activations "
            "(extract without standardize/pca_dim) or extract with transforms= directly."
        )
    if acts.num_features != transform.channels:
        raise ValueError(
            f"layer {acts.name!r} has {acts.num_features} channels, the transform expects {transform.channels}."
        )
    rows = max(1, BLOCK_BYTES // (4 * acts.num_features))
    blocks = []
    for i in range(0, acts.num_points, rows):
        block = acts.points[i : i + rows]
        block = block if isinstance(block, Tensor) else torch.from_numpy(np.array(block, dtype=np.float32))
        blocks.append(transform.apply(block))
    meta = {**acts.meta, "transfer": True, "store": None}
    return LayerActivations(acts.name, torch.cat(blocks), acts.index, acts.geometry, acts.num_images, transform,
                            list(acts.image_names), meta)  # fmt: skip
