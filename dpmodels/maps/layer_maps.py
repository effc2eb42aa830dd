"""``LayerMaps``: a layer's cluster, uncertainty and novelty maps, and ``layer_maps`` to make them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor

from ..activations.types import LayerActivations, LayerGeometry
from ..posterior import MixturePosterior
from .colours import cluster_colours
from .registry import MAPS, map_kind
from .resample import upsample_map
from .uncertainty import point_uncertainty

__all__ = ["MAP_KINDS", "LayerMaps", "layer_maps", "resolve_posterior"]

MAP_KINDS = tuple(MAPS)  # the built-in kinds; ``MAPS`` also holds any registered later


@dataclass
class LayerMaps:
    """Per-position maps of one layer, all ``(I, H_l, W_l)``, one per kind in
    ``dpmodels.maps.MAPS`` and read as attributes (``maps.entropy``) or with ``get``.

    Attributes
    ----------
    name : the layer's name.
    geometry : where map positions sit on the input.
    values : ``{kind: (I, H_l, W_l)}``; the built-in kinds (``dpmodels.maps.registry``):
        labels : most probable cluster (int64, canonical order: 0 = largest weight; ``-1`` = no point).
        confidence : the most probable cluster's responsibility (``NaN`` = no point), likewise below.
        entropy : assignment entropy of the responsibilities (nats).
        epistemic : mutual information between assignment and parameters (nats).
        aleatoric : expected assignment entropy given the parameters (nats).
        novelty : ``-log p(x | data)`` (nats, or nats per feature when ``meta["per_dimension"]``).
    weights : ``(K,)`` posterior mean cluster weights, canonical order; cluster ``k`` is drawn in
        colour ``k`` of ``dpmodels.maps.cluster_colours`` in every image and figure.
    active : ``(K,)`` bool, clusters explaining more than the posterior's active threshold.
    image_names : one per image.
    meta : settings (num_draws, seed, per_dimension).
    """

    name: str
    geometry: LayerGeometry
    values: dict[str, Tensor]
    weights: Tensor
    active: Tensor
    image_names: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __getattr__(self, kind: str) -> Tensor:  # maps.entropy: called only for names not found
        values = self.__dict__.get("values")
        if values is not None and kind in values:
            return values[kind]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {kind!r}")

    def with_values(self, **values: Tensor) -> LayerMaps:
        """A copy with the given kinds' maps replaced (or added), the rest shared."""
        return replace(self, values={**self.values, **values})

    @property
    def num_images(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_active(self) -> int:
        return int(self.active.sum())

    @property
    def colours(self) -> np.ndarray:
        """``(K, 3)`` RGB colour of each cluster (canonical order)."""
        return cluster_colours(int(self.weights.shape[0]))

    def get(self, kind: str) -> Tensor:
        """The ``(I, H_l, W_l)`` map of ``kind`` (a name in ``dpmodels.maps.MAPS``)."""
        if kind not in self.values:
            map_kind(kind)  # an unknown name: the error lists the registered ones
            raise ValueError(f"layer {self.name!r} has no {kind!r} map (its maps: {sorted(self.values)}).")
        return self.values[kind]

    def at_input(
        self, kind: str, image_size: tuple[int, int] | None = None, images: Sequence[int] | None = None
    ) -> Tensor:
        """The ``kind`` map at input resolution ``(I, H, W)``: labels by nearest position, continuous
        maps by bilinear interpolation between position centres (see ``dpmodels.maps.resample``).

        ``image_size``: the ``(H, W)`` of the images the maps will be compared with or drawn over;
        it must equal the layer's input size (checked, not resized to). ``images``: indices of the
        images to resample (default all); the result is then ``(len(images), H, W)``."""
        if image_size is not None and tuple(image_size) != tuple(self.geometry.input_size):
            raise ValueError(
                f"layer {self.name!r} was extracted from {tuple(self.geometry.input_size)} images, got "
                f"image_size={tuple(image_size)}; use the images the activations came from."
            )
        mode = "nearest" if map_kind(kind).clusters else "bilinear"
        values = self.get(kind)
        if images is not None:
            values = values[torch.as_tensor(list(images), dtype=torch.long)]
        return upsample_map(values, self.geometry, mode)


def resolve_posterior(posterior, acts: LayerActivations) -> MixturePosterior:
    """The ``B = 1`` :class:`MixturePosterior` fitted on ``acts``'s layer.

    ``posterior``: a fitted ``DPGMM``, a ``MixturePosterior`` with ``B = 1``, or a mapping from layer
    name to either (looked up by ``acts.name``)."""
    if isinstance(posterior, Mapping):
        if acts.name not in posterior:
            raise ValueError(
                f"no fit for layer {acts.name!r}: the fits are for {sorted(posterior)}; "
                "fit a DPGMM on this layer's points first."
            )
        posterior = posterior[acts.name]
    if not isinstance(posterior, MixturePosterior):
        fitted = getattr(posterior, "posterior_", None)
        if not isinstance(fitted, MixturePosterior):
            raise ValueError(
                f"expected a fitted DPGMM or a MixturePosterior, got {type(posterior).__name__}"
                f"{' (not fitted: call fit first)' if hasattr(posterior, 'fit') else ''}."
            )
        posterior = fitted
    if posterior.batch_size != 1:
        raise ValueError(
            f"expected a posterior of one fit (B = 1), got B = {posterior.batch_size}; "
            "pick the layer's fit with posterior.select(b)."
        )
    D = posterior.params.num_features
    if acts.num_features != D:
        raise ValueError(
            f"layer {acts.name!r} has {acts.num_features}-dimensional points but the posterior was fitted "
            f"on {D}-dimensional ones: it belongs to another layer or transform; fit this layer first."
        )
    return posterior


def layer_maps(
    posterior,
    acts: LayerActivations,
    *,
    num_draws: int = 32,
    seed: int = 0,
    chunk_size: int | None = None,
    per_dimension: bool = False,
    progress: bool = False,
) -> LayerMaps:
    """Cluster, uncertainty and novelty maps of every point in ``acts``.

    ``posterior``: a fitted ``DPGMM``, a ``B = 1`` ``MixturePosterior``, or a ``{layer: fit}``
    mapping, fitted on this layer's points (or a subsample of them). All ``acts.points`` (tensor,
    array or memmap) are evaluated, ``chunk_size`` at a time; ``num_draws`` posterior draws (seeded
    by ``seed``) estimate the epistemic part. See :mod:`dpmodels.maps.uncertainty` for definitions.
    """
    post = resolve_posterior(posterior, acts)
    points = acts.points
    if isinstance(points, str) or hasattr(points, "__fspath__"):
        points = np.load(points, mmap_mode="r")
    values = point_uncertainty(
        post,
        points,
        num_draws=num_draws,
        seed=seed,
        chunk_size=chunk_size,
        per_dimension=per_dimension,
        progress=progress,
    )
    maps = {k: acts.to_maps(v) for k, v in values.items()}  # each (I, H_l, W_l)
    return LayerMaps(
        name=acts.name,
        geometry=acts.geometry,
        values=maps,
        weights=post.weights[0].detach().cpu(),
        active=post.active[0].detach().cpu(),
        image_names=list(acts.image_names),
        meta={"num_draws": num_draws, "seed": seed, "per_dimension": per_dimension},
    )
