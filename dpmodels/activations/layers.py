"""Which layers a model offers for analysis: their names, shapes and geometry on the input, a
default selection, and a readable table to choose from.

Layer names are eval-mode node names of ``torchvision.models.feature_extraction`` (e.g.
``"layer1"``, ``"layer1.0.relu_1"``, ``"features.3"``); for models FX cannot trace they are module
names. Names of container modules (``"layer1"``) are accepted too and mean their last node.

A node counts as a layer when its output, for every image of a batch, is a spatial map that depends
on the input: a channel-first ``(b, C, H_l, W_l)`` tensor, a channel-last ``(b, H_l, W_l, C)`` one,
or a transformer's patch tokens ``(b, T, C)`` (see :class:`~dpmodels.activations._graph.Layout`).
Which axes are spatial is measured, not guessed: the model runs on two input sizes, and the axes
that follow the input size are the spatial ones. Nodes that return Python numbers, sizes, tuples or
input-independent tensors (a learned constant map) are not layers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._graph import (
    NCHW,
    Layout,
    Tap,
    check_layer_names,
    container_names,
    layer_names,
    module_type,
    preserve_mode,
    to_map,
)
from .geometry import layer_geometry
from .types import LayerGeometry

__all__ = [
    "ACTIVATIONS",
    "LayerInfo",
    "Tap",
    "check_layer_names",
    "container_names",
    "conv_layers",
    "format_layers",
    "layer_names",
    "list_layers",
    "preserve_mode",
    "probe_layers",
    "probe_names",
]
# Tap, layer_names, check_layer_names, container_names and preserve_mode come from the private
# ._graph module; other packages import them from here.

# module classes and function names counted as nonlinearities by ``conv_layers``
ACTIVATIONS = frozenset(
    "ReLU ReLU6 LeakyReLU PReLU ELU SELU CELU GELU SiLU Mish Hardswish Hardtanh Tanh Sigmoid Softplus "
    "relu relu_ relu6 leaky_relu elu selu gelu silu mish hardswish tanh sigmoid softplus".split()
)


@dataclass(frozen=True)
class LayerInfo:
    """One spatial layer: node ``name``, output ``shape = (C_l, H_l, W_l)`` for the probed input
    size, its ``geometry`` on the input, and what produces it (``module_type``: a module class name
    such as ``"Conv2d"`` or a function name such as ``"add"``)."""

    name: str
    shape: tuple[int, int, int]
    geometry: LayerGeometry
    module_type: str
    layout: Layout = NCHW


def _check_input_size(input_size) -> tuple[int, int, int]:
    size = tuple(int(v) for v in input_size) if isinstance(input_size, (tuple, list)) else ()
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size must be (C, H, W) with positive entries, got {input_size!r}.")
    return size  # type: ignore[return-value]


def _forward(model: nn.Module, names: Sequence[str], mode: str, size, device, seed: int = 0) -> dict:
    """Raw outputs of ``names`` for a batch of two random inputs of ``size = (C, H, W)``."""
    tap = Tap(model, names, mode, strict=False)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, *size, generator=g).to(device)  # (2, C, H, W)
    with torch.no_grad():
        return tap._outputs(x)


def _patch_size(model: nn.Module) -> tuple[int, int] | None:
    """Stride of a patch-embedding convolution (kernel = stride > 1), the first one in module order."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == m.stride and max(m.stride) > 1:
            return tuple(m.stride)  # type: ignore[return-value]
    return None


def _layout(o, o2, size, patch) -> Layout | None:
    """The layout of output ``o`` (``o2``: the same node at a larger input, or ``None`` if that failed)."""
    if not isinstance(o, Tensor) or not o.is_floating_point() or o.shape[0] != 2:
        return None  # numbers, sizes, index tensors, outputs not per image
    if o.dim() == 4:
        if not isinstance(o2, Tensor) or o2.dim() != 4:
            return NCHW  # size probe failed (a fixed-size model): channel-first, as torch's convention
        grew = [o2.shape[d] != o.shape[d] for d in (1, 2, 3)]
        if grew == [False, True, True] or not any(grew):
            return NCHW
        return Layout("nhwc") if grew == [True, True, False] else None
    if o.dim() == 3 and patch is not None:
        grid = (size[1] // patch[0], size[2] // patch[1])
        prefix = o.shape[1] - grid[0] * grid[1]
        if 0 <= prefix <= 8:  # class and register tokens come first
            return Layout("tokens", prefix, grid)
    return None


def probe_layers(model: nn.Module, names: Sequence[str], mode: str, input_size, device) -> dict[str, tuple]:
    """``{name: (shape (C_l, H_l, W_l), Layout)}`` for the nodes among ``names`` that are layers."""
    net = copy.deepcopy(model).to(device).eval()
    try:
        outs = _forward(net, names, mode, input_size, device)
    except RuntimeError as err:
        raise ValueError(
            f"a forward pass of {type(model).__name__} on an input of size (C, H, W) = {input_size} failed "
            f"({str(err).splitlines()[0]}); check the channel count and that the image size suits the model."
        ) from err
    C, H, W = input_size
    try:
        larger = _forward(net, names, mode, (C, 2 * H, 2 * W), device)
    except Exception:  # noqa: BLE001 - fixed-size models (a ViT's position table): layouts from one size
        larger = {}
    patch = _patch_size(net)
    result = {}
    for n in names:
        o = outs.get(n)
        layout = _layout(o, larger.get(n), input_size, patch)
        if layout is None or bool(torch.equal(o[0], o[1])):  # not a map, or the same for any input
            continue
        shape = tuple(to_map(o, layout).shape[1:])
        if min(shape) > 0:
            result[n] = (shape, layout)
    return result


def probe_names(model: nn.Module, layers: Sequence[str] | None) -> tuple[list[str], str]:
    """Node names to probe (``layers`` checked, container names allowed) and the tap mode."""
    names, mode = layer_names(model)
    if layers is not None:  # container modules ("layer1") are valid too: their last node's output
        names = check_layer_names(layers, names + (container_names(model, names) if mode == "fx" else []))
    return names, mode


def list_layers(
    model: nn.Module,
    input_size: tuple[int, int, int] = (3, 224, 224),
    device: str | torch.device = "cpu",
    *,
    layers: Sequence[str] | None = None,
    seed: int = 0,
) -> list[LayerInfo]:
    """Every node of ``model`` whose output is a spatial map, in execution order, with its shape and
    geometry for inputs of ``input_size = (C, H, W)``. ``layers`` (node names, or names of
    container modules such as ``"layer1"``, meaning their last node's output) restricts the listing (and the
    geometry probes, which cost a backward pass per layer) to those names. The model is not changed
    (all probing happens on a deep copy)."""
    input_size = _check_input_size(input_size)
    names, mode = probe_names(model, layers)
    probed = probe_layers(model, names, mode, input_size, device)
    if layers is not None and len(probed) < len(names):
        flat = [n for n in names if n not in probed]
        raise ValueError(
            f"layers {flat} do not output a spatial map that depends on the input ((b, C, H, W), channel-last "
            "(b, H, W, C) or patch tokens (b, T, C)); only spatial layers can be extracted. "
            "list_layers(model, input_size) lists those."
        )
    spatial = [n for n in names if n in probed]
    layouts = {n: probed[n][1] for n in spatial}
    geometry = (
        layer_geometry(
            model,
            spatial,
            input_size,
            seed=seed,
            device=device,
            mode=mode,
            layouts=layouts,
            map_sizes={n: tuple(probed[n][0][1:]) for n in spatial},
        )
        if spatial
        else {}
    )
    return [LayerInfo(n, probed[n][0], geometry[n], module_type(model, n), probed[n][1]) for n in spatial]


def _ends_in_activation(model: nn.Module, name: str) -> bool:
    """Whether node ``name`` is a module whose last submodule is a nonlinearity (a traced leaf block
    such as torchvision's ``Conv2dNormActivation``)."""
    try:
        last = list(model.get_submodule(name).modules())[-1]
    except AttributeError:
        return False
    return type(last).__name__ in ACTIVATIONS


def _last_per_resolution(names: Sequence[str], probed: dict) -> list[str]:
    """Of ``names`` (execution order), the last one at each map size (1 x 1 maps left out)."""
    last: dict[tuple, str] = {}
    for n in names:
        size = probed[n][0][1:]
        if size != (1, 1):
            last.pop(size, None)
            last[size] = n  # re-inserted: dict order follows the last occurrence
    return list(last.values())


def conv_layers(
    model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), device: str | torch.device = "cpu"
) -> list[str]:
    """A default selection of layer names: the last block of each resolution, shallow to deep.

    Rule: a model's own ``default_layers`` attribute (dpmodels' EfficientNet-Lite has one); for
    torchvision-style ResNets (children ``layer1`` ... ``layer4``) the stem activation ``relu`` and the
    four stage outputs; otherwise, among the outputs of nonlinearities (modules or functions in
    :data:`ACTIVATIONS`, or blocks whose last submodule is one, such as ``Conv2dNormActivation``;
    every ``Conv2d`` output for models without them), the last one at each map
    size, i.e. each stage's output before the resolution drops. When all of them share one map size
    (a vision transformer), up to six evenly spaced residual-stream outputs (``add`` nodes), deepest
    included.
    """
    input_size = _check_input_size(input_size)
    own = getattr(model, "default_layers", None)
    if own:
        return [info.name for info in list_layers(model, input_size, device, layers=list(own))]
    names, mode = layer_names(model)
    children = dict(model.named_children())
    if mode == "fx" and all(f"layer{i}" in children for i in range(1, 5)) and "relu" in names:
        return ["relu", "layer1", "layer2", "layer3", "layer4"]
    probed = probe_layers(model, names, mode, input_size, device)
    kinds = {n: module_type(model, n) for n in names if n in probed}
    if mode == "hooks":  # a hooked container repeats its last child's output: keep leaf modules only
        kinds = {n: k for n, k in kinds.items() if not list(model.get_submodule(n).children())}
    candidates = [n for n, kind in kinds.items() if kind in ACTIVATIONS or _ends_in_activation(model, n)]
    candidates = candidates or [n for n, kind in kinds.items() if kind == "Conv2d"]
    chosen = _last_per_resolution(candidates, probed)
    if len(chosen) == 1:
        stream = [
            n for n, kind in kinds.items() if kind == "add" and probed[n][0][1:] == probed[chosen[0]][0][1:]
        ]
        if len(stream) > 1:
            step = len(stream) / min(6, len(stream))
            chosen = [stream[len(stream) - 1 - int(i * step)] for i in reversed(range(min(6, len(stream))))]
    if not chosen:
        raise ValueError(
            f"{type(model).__name__} has no layer with a spatial output for input size {input_size} (looked "
            "for activations, convolutions and patch tokens); pass layers=[...] explicitly (see "
            "format_layers(list_layers(model, input_size)))."
        )
    return chosen


def format_layers(infos: Sequence[LayerInfo]) -> str:
    """A table of layers (name, type, channels, map size, stride, offset, receptive field)."""
    head = ("layer", "type", "channels", "map", "stride", "offset", "field")
    rows = [head]
    for info in infos:
        g = info.geometry

        def pair(v, fmt="g"):
            return f"{v[0]:{fmt}}" if v[0] == v[1] else f"{v[0]:{fmt}}x{v[1]:{fmt}}"

        rows.append(
            (
                info.name,
                info.module_type,
                str(info.shape[0]),
                f"{g.map_size[0]}x{g.map_size[1]}",
                pair(g.stride),
                pair(g.offset),
                pair(g.receptive_field),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
