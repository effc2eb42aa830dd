"""Per-layer maps: most probable cluster, assignment entropy, epistemic uncertainty (mutual
information with the parameters) and novelty for every position, at map or input resolution."""

from .layer_maps import MAP_KINDS, LayerMaps, layer_maps, resolve_posterior
from .resample import RESAMPLE_MODES, centre_pixels, mask_at_positions, upsample_map
from .transitions import transition_matrix
from .uncertainty import n_active_draws, point_uncertainty

__all__ = [
    "MAP_KINDS",
    "RESAMPLE_MODES",
    "LayerMaps",
    "centre_pixels",
    "layer_maps",
    "mask_at_positions",
    "n_active_draws",
    "point_uncertainty",
    "resolve_posterior",
    "transition_matrix",
    "upsample_map",
]
