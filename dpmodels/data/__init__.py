"""Datasets and data access: planted-cluster mixtures with known truth, ``PointSource`` (tensors,
arrays or memory-mapped ``.npy`` files read chunk by chunk), and image sets with ground truth
(procedural texture mosaics, digits, bundled scikit-image images, user folders, torchvision sets),
all returned as ``ImageSet`` and reachable by name through ``load_dataset``."""

from .bundled import BUNDLED_IMAGES, load_bundled, skimage_images, skimage_texture_mosaics
from .digits import digits_images
from .folder import image_folder
from .images import IGNORE_LABEL, ImageSet
from .registry import DATASETS, load_dataset
from .source import PointSource
from .synthetic import PlantedMixture
from .textures import TEXTURE_FAMILIES, Shift, texture_mosaics, texture_patches, voronoi_regions
from .torchvision_sets import TORCHVISION_SETS, torchvision_dataset

__all__ = [
    "BUNDLED_IMAGES",
    "DATASETS",
    "IGNORE_LABEL",
    "ImageSet",
    "PlantedMixture",
    "PointSource",
    "Shift",
    "TEXTURE_FAMILIES",
    "TORCHVISION_SETS",
    "digits_images",
    "image_folder",
    "load_bundled",
    "load_dataset",
    "skimage_images",
    "skimage_texture_mosaics",
    "texture_mosaics",
    "texture_patches",
    "torchvision_dataset",
    "voronoi_regions",
]
