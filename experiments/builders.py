"""From config groups to library objects (shared by the entry points)."""

from __future__ import annotations

from hydra.errors import InstantiationException
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf

from dpmodels.data import ImageSet
from dpmodels.data.registry import DATASETS

__all__ = ["dataset_from_config", "dpgmm_kwargs"]


def _option(target: str) -> str:
    """The data set's name for messages: its ``DATASETS`` key, else the loader's name."""
    try:
        loader = get_method(target)
    except Exception:  # noqa: BLE001 - named in the error that follows
        return target
    return next((name for name, fn in DATASETS.items() if fn is loader), getattr(loader, "__name__", target))


def dataset_from_config(data: DictConfig) -> ImageSet:
    """The ``data`` group as an ``ImageSet``: ``hydra.utils.instantiate`` calls the loader that
    ``data._target_`` names with the group's other fields. A missing mandatory value (``data.root``)
    and the loader's own errors (a folder that does not exist) are raised as themselves, not wrapped."""
    missing = sorted(OmegaConf.missing_keys(data))
    if missing:
        key = missing[0].removeprefix("data.")  # missing_keys gives full keys
        raise ValueError(
            f"data={_option(data._target_)} needs data.{key}: pass data.{key}=... on the command line."
        )
    try:
        images = instantiate(data, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (ValueError, TypeError, OSError)):
            raise cause from None
        raise ValueError(f"data._target_={data._target_!r}: {err}") from None
    if not isinstance(images, ImageSet):
        raise ValueError(
            f"data._target_={data._target_!r} returned {type(images).__name__}, not a dpmodels.data.ImageSet."
        )
    return images


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
        "rank": infer.rank,
        "engine": infer.engine,
        "batch_size": infer.batch_size,
        "max_iter": infer.max_iter,
        "tol": infer.tol,
        "active_threshold": infer.active_threshold,
        "checkpoint_every": infer.checkpoint_every,
    }


def check_importance_config(model, layers, images: ImageSet, device: str = "cpu") -> None:
    """``importance=true``: refuse a network without a classifier head (or a layer a forward hook
    cannot replace) in one line, before any extraction or fit."""
    from dpmodels.concepts.importance import check_importance

    try:
        check_importance(model, layers, tuple(images.images.shape[1:]), device)
    except ValueError as err:
        raise ValueError(f"importance=true: {err}") from None
