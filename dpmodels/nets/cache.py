"""Train once, load afterwards: an on-disk cache of trained networks keyed by their settings.

The key is a SHA-256 of the canonical JSON of (network spec, data spec, training settings, seed,
dpmodels version). An entry is one checkpoint file ``<key>.pt`` written atomically, holding the
state dict and metadata (the specs and the :class:`TrainReport`). A corrupt or mismatching entry is
reported with a warning and retrained, never used.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..data.images import ImageSet
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .train import TrainReport, train_classifier
from .zoo import build_net

__all__ = ["CacheWarning", "cache_key", "default_cache_dir", "train_or_load"]

logger = logging.getLogger(__name__)

# Settings of train_classifier that do not change the trained weights' meaning (CPU/GPU differ only
# by floating-point rounding) and are therefore not part of the key.
_NOT_IN_KEY = {"device", "progress", "checkpoint_path", "seed"}


class CacheWarning(UserWarning):
    """A cache entry could not be used (corrupt, or for other settings) and is being rebuilt."""


def default_cache_dir() -> Path:
    """``$DPMODELS_CACHE`` if set, else ``~/.cache/dpmodels``."""
    env = os.environ.get("DPMODELS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dpmodels"


def _train_defaults() -> dict:
    params = inspect.signature(train_classifier).parameters.values()
    return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


def _canonical(obj, what: str) -> str:
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))
    except TypeError as err:
        raise ValueError(
            f"{what} must be JSON-serialisable (dicts, lists, str, numbers, bool, None) to form a cache key: {err}."
        ) from err


def cache_key(
    net: dict, data_spec: dict, train_kwargs: dict | None = None, seed: int = 0
) -> tuple[str, dict]:
    """``(hex key, keyed settings)`` for a network trained with these settings.

    ``train_kwargs`` is completed with :func:`train_classifier`'s defaults, so spelling out a default
    gives the same key as leaving it out.
    """
    import dpmodels  # the version is read at call time; the package is initialised by then

    train_kwargs = dict(train_kwargs or {})
    unknown = set(train_kwargs) - set(_train_defaults())
    if unknown:
        raise ValueError(f"unknown train_kwargs {sorted(unknown)}; valid: {sorted(_train_defaults())}.")
    train = {k: v for k, v in {**_train_defaults(), **train_kwargs}.items() if k not in _NOT_IN_KEY}
    keyed = {"net": net, "data": data_spec, "train": train, "seed": seed, "version": dpmodels.__version__}
    return hashlib.sha256(_canonical(keyed, "the settings").encode()).hexdigest()[:24], keyed


def train_or_load(
    net: dict,
    data_spec: dict,
    make_data: Callable[[], tuple[ImageSet, ImageSet | None]],
    train_kwargs: dict | None = None,
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
    retrain: bool = False,
) -> tuple[nn.Module, TrainReport]:
    """A network trained with these settings: loaded from the cache if present, else trained and cached.

    Parameters
    ----------
    net : architecture spec, ``build_net`` keyword arguments with ``"name"``
        (e.g. ``{"name": "small_cnn", "in_channels": 3, "num_classes": 8}``); must not hold ``weights``.
    data_spec : JSON-serialisable description of the data ``make_data`` returns (generator, settings,
        seeds). It is only hashed: keep it truthful, or the cache returns a net trained on other data.
    make_data : returns ``(train, val_or_None)``; called only when training is needed.
    train_kwargs : keyword arguments of :func:`train_classifier` (epochs, lr, batch_size, ...).
    seed : seeds the initial weights (global RNG, forked) and the training order.
    cache_dir : defaults to :func:`default_cache_dir`.
    retrain : ignore an existing entry and overwrite it.

    Returns the model (eval mode, on ``device``) and its report; ``report.loaded_from_cache`` tells
    which happened (also logged at INFO level), ``report.cache_key`` names the entry.
    """
    if not isinstance(net, dict) or "name" not in net or "weights" in net:
        raise ValueError(
            f"net must be a dict of build_net arguments with a 'name' and no 'weights', got {net!r}."
        )
    train_kwargs = dict(train_kwargs or {})
    if _NOT_IN_KEY & set(train_kwargs):
        raise ValueError(
            f"pass {sorted(_NOT_IN_KEY & set(train_kwargs))} as train_or_load arguments, not train_kwargs."
        )
    key, keyed = cache_key(net, data_spec, train_kwargs, seed)
    path = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    path = path / f"{net['name']}-{key}.pt"

    if path.exists() and not retrain:
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[]):  # the random init is overwritten: keep the caller's RNG
            model = build_net(**net)
        try:
            _, meta = load_checkpoint(path, model=model)
            if meta.get("settings") != json.loads(_canonical(keyed, "the settings")):
                raise CheckpointError(f"{path} was saved for other settings than its key says.")
        except CheckpointError as err:
            warnings.warn(
                f"ignoring unusable cache entry ({err}); retraining and replacing it.",
                CacheWarning,
                stacklevel=2,
            )
        else:
            report = TrainReport.from_dict(meta["report"])
            report.loaded_from_cache, report.cache_key = True, key
            logger.info("loaded %s from cache %s in %.2f s", net["name"], path, time.perf_counter() - t0)
            return model.to(device).eval(), report

    logger.info("training %s (cache miss, entry %s)", net["name"], path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_net(**net)
    train, val = make_data()
    report = train_classifier(model, train, val, **train_kwargs, seed=seed, device=device, progress=progress)
    report.cache_key = key
    save_checkpoint(model, path, {"settings": keyed, "report": report.to_dict()})
    logger.info("trained %s in %.1f s; cached at %s", net["name"], report.seconds, path)
    return model, report
