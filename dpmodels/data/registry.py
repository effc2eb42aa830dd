"""Every image data set by name: ``load_dataset("textures", num_images=16)`` -> ``ImageSet``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable

from .bundled import skimage_images, skimage_texture_mosaics
from .digits import digits_images
from .folder import image_folder
from .images import ImageSet
from .textures import texture_mosaics, texture_patches
from .torchvision_sets import torchvision_dataset

__all__ = ["DATASETS", "load_cifar10", "load_dataset", "load_fashion_mnist", "load_mnist"]


def _torchvision(name: str) -> Callable[..., ImageSet]:
    def load(
        root: str | os.PathLike,
        train: bool = False,
        num_images: int | None = None,
        seed: int = 0,
        size: int | None = None,
    ) -> ImageSet:
        images = torchvision_dataset(name, root, train=train, num_images=num_images, seed=seed)
        return images if size is None else images.resized(size)

    load.__name__ = load.__qualname__ = f"load_{name}"
    load.__doc__ = (
        f"``torchvision_dataset({name!r}, ...)``: {name} from local files under ``root``, resized to "
        "``(size, size)`` when ``size`` is given."
    )
    return load


load_mnist = _torchvision("mnist")
load_fashion_mnist = _torchvision("fashion_mnist")
load_cifar10 = _torchvision("cifar10")


DATASETS: dict[str, Callable[..., ImageSet]] = {
    "textures": texture_mosaics,
    "texture_patches": texture_patches,
    "digits": digits_images,
    "skimage": skimage_images,
    "skimage_mosaics": skimage_texture_mosaics,
    "folder": image_folder,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}
"""Data set name -> loader; every loader returns an ``ImageSet``."""


def load_dataset(name: str, **kwargs) -> ImageSet:
    """The data set ``name`` (a key of ``DATASETS``) built with the loader's keyword arguments."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; valid names: {sorted(DATASETS)}.")
    loader = DATASETS[name]
    signature = inspect.signature(loader)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        raise TypeError(f"load_dataset({name!r}): {err}; {name} accepts {signature}.") from None
    return loader(**kwargs)
