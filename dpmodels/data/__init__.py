"""Datasets and data access: planted-cluster mixtures with known truth, ``PointSource`` (tensors,
arrays or memory-mapped ``.npy`` files read chunk by chunk), and image sets with ground truth
(procedural texture mosaics, digits, bundled scikit-image images, user folders, torchvision sets),
all returned as ``ImageSet`` and reachable by name through ``load_dataset``.

Names are imported on first use (PEP 562), so that the fitting code, which needs only
``PointSource``, does not load scikit-image, scikit-learn or torchvision."""

from __future__ import annotations

import importlib

_WHERE = {
    "BUNDLED_IMAGES": "bundled",
    "load_bundled": "bundled",
    "skimage_images": "bundled",
    "skimage_texture_mosaics": "bundled",
    "digits_images": "digits",
    "image_folder": "folder",
    "IGNORE_LABEL": "images",
    "ImageSet": "images",
    "DATASETS": "registry",
    "load_dataset": "registry",
    "PointSource": "source",
    "PlantedMixture": "synthetic",
    "TEXTURE_FAMILIES": "textures",
    "Shift": "textures",
    "texture_mosaics": "textures",
    "texture_patches": "textures",
    "voronoi_regions": "textures",
    "TORCHVISION_SETS": "torchvision_sets",
    "torchvision_dataset": "torchvision_sets",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'dpmodels.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
