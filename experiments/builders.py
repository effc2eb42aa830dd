"""From config groups to library objects (shared by the entry points)."""

from __future__ import annotations

import inspect
from dataclasses import fields

import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from dpmodels.data import ImageSet
from dpmodels.data.registry import DATASETS, load_dataset
from dpmodels.data.textures import Shift

from .schema import DataConf

__all__ = ["dataset_from_config", "dpgmm_kwargs"]

_SHIFT = ("contrast", "noise", "colour")
_RENAME = {"folder": {"num_images": "max_images"}}


def dataset_from_config(data: DictConfig) -> ImageSet:
    """The ``data`` group as an ``ImageSet``. A field the chosen loader does not take must keep its
    default (an error names it); ``size`` is applied by resizing when the loader has no such option."""
    cfg = OmegaConf.to_container(data, resolve=True)
    name = cfg.pop("name")
    if name not in DATASETS:
        raise ValueError(f"unknown data set data.name={name!r}; valid names: {sorted(DATASETS)}.")
    loader = DATASETS[name]
    accepted = set(inspect.signature(loader).parameters)
    defaults = {f.name: f.default for f in fields(DataConf) if f.name in cfg}
    shift = {k: cfg.pop(k) for k in _SHIFT}
    if any(shift[k] != defaults[k] for k in _SHIFT):
        cfg["shift"] = Shift(**shift)
    for old, new in _RENAME.get(name, {}).items():
        cfg[new] = cfg.pop(old)
    resize_to = None
    if "size" not in accepted:
        resize_to = cfg.pop("size")
    kwargs = {}
    for key, value in cfg.items():
        if key in accepted:
            if value is not None:
                kwargs[key] = list(value) if isinstance(value, list) else value
        elif value is not None and value != defaults.get(key):
            raise ValueError(
                f"data.{key}={value!r} does not apply to data={name} (its options: {sorted(accepted)}); "
                "remove the override."
            )
    renamed = {new: old for old, new in _RENAME.get(name, {}).items()}
    required = [
        p.name
        for p in inspect.signature(loader).parameters.values()
        if p.default is inspect.Parameter.empty and p.kind is p.POSITIONAL_OR_KEYWORD and p.name not in kwargs
    ]
    if required:
        key = renamed.get(required[0], required[0])
        raise ValueError(f"data={name} needs data.{key}: pass data.{key}=... on the command line.")
    images = load_dataset(name, **kwargs)
    if resize_to is not None and images.size != (resize_to, resize_to):
        images = _resize(images, resize_to)
    return images


def _resize(images: ImageSet, size: int) -> ImageSet:
    pixels = F.interpolate(
        images.images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    ).clamp(0, 1)
    masks = None
    if images.masks is not None:
        masks = F.interpolate(images.masks[:, None].float(), size=(size, size), mode="nearest")[:, 0].long()
    meta = {**images.meta, "resized_to": size}
    return ImageSet(
        pixels, masks, images.targets, images.names, images.mask_names, images.class_names, images.name, meta
    )


def dpgmm_kwargs(prior: DictConfig, infer: DictConfig) -> dict:
    """Keyword arguments of ``dpmodels.DPGMM`` from the ``prior`` and ``infer`` groups (seed, device
    and progress are passed separately)."""
    return {
        "truncation": prior.truncation,
        "prior": prior.kind,
        "concentration": prior.concentration,
        "discount": prior.discount,
        "learn_concentration": prior.learn_concentration,
        "prior_settings": OmegaConf.to_container(prior.settings),
        "covariance": infer.covariance,
        "engine": infer.engine,
        "batch_size": infer.batch_size,
        "max_iter": infer.max_iter,
        "tol": infer.tol,
        "active_threshold": infer.active_threshold,
        "checkpoint_every": infer.checkpoint_every,
    }
