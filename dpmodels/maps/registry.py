"""Every map kind in one place: name -> the function that computes it per point, and how to show it.

A map kind is one function of a :class:`~dpmodels.maps.uncertainty.MapChunk` (a chunk of ``n``
points with the posterior's quantities at those points, each computed once and shared) returning
``(n,)`` values, registered with its display metadata::

    @register_map("margin", label="top-2 responsibility margin", cmap="viridis")
    def margin(chunk):
        top2 = chunk.log_resp.exp().topk(2, dim=-1).values  # (n, 2)
        return top2[:, 0] - top2[:, 1]

Computing (:func:`~dpmodels.maps.point_uncertainty`, :func:`~dpmodels.maps.layer_maps`), saving and
loading a run's ``maps/<layer>.npz`` (:mod:`dpmodels.analysis.outputs`), the concept level
(:mod:`dpmodels.concepts.levels`) and drawing (:mod:`dpmodels.viz`) all iterate over ``MAPS`` in
registration order; ``LayerMaps.<name>`` and ``LayerMaps.get(name)`` read the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .uncertainty import MapChunk

__all__ = ["MAPS", "MapKind", "entropy", "map_kind", "register_map"]


@dataclass(frozen=True)
class MapKind:
    """One map kind.

    name : the key in ``MAPS``, the ``LayerMaps`` attribute and the ``maps/<layer>.npz`` array name.
    compute : ``MapChunk -> (n,)`` values of a chunk of points.
    label : the colourbar label (what the value is, with its units).
    cmap : the matplotlib colormap of its panels.
    clusters : values are cluster indices (``-1`` = no point): resampled to input resolution by
        nearest position, drawn as an overlay in the cluster palette, not with a colormap.
    grouping_invariant : the value does not depend on how components are grouped, so the concept
        level (:mod:`dpmodels.concepts`) copies it; other kinds are ``NaN`` there unless the concept
        code computes them (labels, confidence and entropy).
    """

    name: str
    compute: Callable[[MapChunk], Tensor]
    label: str
    cmap: str = "viridis"
    clusters: bool = False
    grouping_invariant: bool = False


MAPS: dict[str, MapKind] = {}
"""Map name -> ``MapKind``, in registration order (the order of panels, files and tables)."""


def register_map(
    name: str,
    *,
    label: str,
    cmap: str = "viridis",
    clusters: bool = False,
    grouping_invariant: bool = False,
) -> Callable[[Callable[[MapChunk], Tensor]], Callable[[MapChunk], Tensor]]:
    """Decorator: register ``fn(chunk) -> (n,)`` as map kind ``name`` (see the module docstring)."""
    reserved = {"name", "geometry", "values", "weights", "active", "image_names", "meta"}
    if not name.isidentifier() or name in reserved:
        raise ValueError(
            f"map name {name!r} must be a Python identifier other than the LayerMaps fields {sorted(reserved)}."
        )

    def add(fn: Callable[[MapChunk], Tensor]) -> Callable[[MapChunk], Tensor]:
        if name in MAPS:
            raise ValueError(
                f"a map named {name!r} is already registered ({MAPS[name].compute.__qualname__})."
            )
        MAPS[name] = MapKind(name, fn, label, cmap, clusters, grouping_invariant)
        return fn

    return add


def map_kind(name: str) -> MapKind:
    """The registered ``MapKind`` called ``name`` (``ValueError`` listing the names otherwise)."""
    if name not in MAPS:
        raise ValueError(f"kind must be one of {tuple(MAPS)}, got {name!r}.")
    return MAPS[name]


def entropy(p: Tensor, dim: int = -1) -> Tensor:
    """Entropy (nats) of probabilities ``p`` along ``dim``; ``0 log 0 = 0``."""
    return -torch.where(p > 0, p * torch.log(p), torch.zeros_like(p)).sum(dim)


# --- the built-in kinds (see dpmodels.maps.uncertainty for the definitions) ----------------------


@register_map("labels", label="cluster", clusters=True)
def labels(chunk: MapChunk) -> Tensor:
    """Most probable cluster under the mean-field responsibilities (canonical index, int64)."""
    return chunk.log_resp.max(-1).indices


@register_map("confidence", label="max responsibility")
def confidence(chunk: MapChunk) -> Tensor:
    """The most probable cluster's responsibility."""
    return chunk.log_resp.max(-1).values.exp()


@register_map("entropy", label="assignment entropy (nats)", cmap="magma")
def assignment_entropy(chunk: MapChunk) -> Tensor:
    """Entropy of the mean-field responsibilities ``q(z | x)`` (nats)."""
    return entropy(chunk.log_resp.exp(), 1)


@register_map("epistemic", label="epistemic: MI(z; θ) (nats)", cmap="viridis")
def epistemic(chunk: MapChunk) -> Tensor:
    """Mutual information between the assignment and the mixture parameters (nats)."""
    return chunk.information["epistemic"]


@register_map("aleatoric", label="aleatoric: E H[z|θ] (nats)", cmap="magma")
def aleatoric(chunk: MapChunk) -> Tensor:
    """Expected assignment entropy given the parameters (nats)."""
    return chunk.information["aleatoric"]


@register_map("novelty", label="novelty: −log p(x) (nats)", cmap="cividis", grouping_invariant=True)
def novelty(chunk: MapChunk) -> Tensor:
    """``-log p(x | data)`` (nats; per feature when ``per_dimension``)."""
    value = -chunk.log_predictive
    return value / chunk.num_features if chunk.per_dimension else value
