"""Per-layer maps: most probable cluster, assignment entropy, epistemic uncertainty (mutual
information with the parameters) and novelty for every position, at map or input resolution.

Every map kind is one entry of ``MAPS`` (:mod:`dpmodels.maps.registry`): a function of a chunk of
points plus how to show it; ``register_map`` adds one."""

from .colours import cluster_colours
from .layer_maps import MAP_KINDS, LayerMaps, layer_maps, resolve_posterior
from .registry import MAPS, MapKind, map_kind, register_map
from .resample import RESAMPLE_MODES, centre_pixels, mask_at_positions, upsample_map
from .transitions import transition_matrix
from .uncertainty import MapChunk, n_active_draws, point_uncertainty

__all__ = [
    "MAPS",
    "MAP_KINDS",
    "RESAMPLE_MODES",
    "LayerMaps",
    "MapChunk",
    "MapKind",
    "centre_pixels",
    "cluster_colours",
    "layer_maps",
    "map_kind",
    "mask_at_positions",
    "n_active_draws",
    "point_uncertainty",
    "register_map",
    "resolve_posterior",
    "transition_matrix",
    "upsample_map",
]
