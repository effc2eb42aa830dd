"""From components to concepts: a hierarchy over a fitted mixture's components, the number of
concepts with its uncertainty over posterior draws, and a layer's maps at the concept level."""

from .hierarchy import CRITERIA, ConceptHierarchy, bhattacharyya_overlap, build_hierarchy, entropy_decrease
from .levels import LEVELS, at_level, concept_layer_maps, concept_point_values, regrouped_layer_maps
from .selection import (
    ConceptSelection,
    concept_draws,
    draw_responsibilities,
    elbow,
    entropy_curve,
    select_concepts,
)

__all__ = [
    "CRITERIA",
    "LEVELS",
    "ConceptHierarchy",
    "ConceptSelection",
    "at_level",
    "bhattacharyya_overlap",
    "build_hierarchy",
    "concept_layer_maps",
    "concept_draws",
    "concept_point_values",
    "draw_responsibilities",
    "elbow",
    "entropy_curve",
    "entropy_decrease",
    "regrouped_layer_maps",
    "select_concepts",
]
