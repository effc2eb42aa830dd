"""Activations of any ``torch.nn.Module``: per-layer position vectors, their index back to
``(image, y, x)``, the layer's geometry on the input, optional standardisation/PCA, and on-disk
stores for layers larger than memory.

Typical use::

    print(format_layers(list_layers(model, (3, 64, 64))))
    acts = extract(model, image_set, ["layer1", "layer2"], standardize=True, pca_dim=32)
    target = extract(model, other_set, transforms={n: a.transform for n, a in acts.items()})
"""

from ._graph import Layout, check_layer_names, preserve_mode, to_map
from .extract import as_images, extract
from .geometry import clear_geometry_cache, layer_geometry
from .layers import LayerInfo, conv_layers, format_layers, list_layers
from .store import load_store
from .transform import apply_transform
from .types import FeatureTransform, LayerActivations, LayerGeometry

__all__ = [
    "FeatureTransform",
    "Layout",
    "LayerActivations",
    "LayerGeometry",
    "LayerInfo",
    "apply_transform",
    "as_images",
    "check_layer_names",
    "conv_layers",
    "extract",
    "format_layers",
    "clear_geometry_cache",
    "layer_geometry",
    "list_layers",
    "load_store",
    "preserve_mode",
    "to_map",
]
