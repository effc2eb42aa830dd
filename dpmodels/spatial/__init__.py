"""Spatially coupled assignments: a Potts term between grid neighbours, mean-field in ``q(z)``.

``SpatialDPGMM(coupling=beta).fit(X, index)`` fits the mixture, then couples each position's
assignment to its 4-neighbours on the layer's grid (``index`` = ``(image, y, x)`` per point), so a
texture region's phases are pulled into one cluster. ``coupling = 0`` is the plain mixture.
"""

from .coupled import (
    CoupledOptions,
    check_coupling,
    coupled_sweep,
    edge_agreement,
    fit_coupled,
    mean_field_assignments,
    unary_logits,
)
from .estimator import SpatialDPGMM
from .grid import Grid, grid_from_index
from .maps import coupled_maps

__all__ = [
    "CoupledOptions",
    "Grid",
    "SpatialDPGMM",
    "check_coupling",
    "coupled_maps",
    "coupled_sweep",
    "edge_agreement",
    "fit_coupled",
    "grid_from_index",
    "mean_field_assignments",
    "unary_logits",
]
