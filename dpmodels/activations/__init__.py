"""Activations of any ``torch.nn.Module``: per-layer position vectors, their index back to
``(image, y, x)``, the layer's geometry on the input, and optional standardisation/PCA."""

from .types import FeatureTransform, LayerActivations, LayerGeometry

__all__ = ["FeatureTransform", "LayerActivations", "LayerGeometry"]
