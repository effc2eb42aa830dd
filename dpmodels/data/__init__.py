"""Datasets and data access: planted-cluster mixtures with known truth, and ``PointSource``
(tensors, arrays or memory-mapped ``.npy`` files read chunk by chunk)."""

from .images import IGNORE_LABEL, ImageSet
from .source import PointSource
from .synthetic import PlantedMixture

__all__ = ["IGNORE_LABEL", "ImageSet", "PlantedMixture", "PointSource"]
