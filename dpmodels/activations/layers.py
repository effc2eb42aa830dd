"""Which layers a model offers for analysis: their names, shapes and geometry on the input, a
default selection, and a readable table to choose from.

Layer names are eval-mode node names of ``torchvision.models.feature_extraction`` (e.g.
``"layer1"``, ``"layer1.0.relu_1"``, ``"features.3"``); for models FX cannot trace they are module
names. Only nodes whose output is a 4-D ``(b, C, H_l, W_l)`` map count as layers.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._graph import Tap, check_layer_names, container_names, layer_names, module_type
from .geometry import layer_geometry
from .types import LayerGeometry

__all__ = ["ACTIVATIONS", "LayerInfo", "conv_layers", "format_layers", "list_layers"]

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


def _check_input_size(input_size) -> tuple[int, int, int]:
    size = tuple(int(v) for v in input_size) if isinstance(input_size, (tuple, list)) else ()
    if len(size) != 3 or min(size) < 1:
        raise ValueError(f"input_size must be (C, H, W) with positive entries, got {input_size!r}.")
    return size  # type: ignore[return-value]


def _shapes(model: nn.Module, names: Sequence[str], mode: str, input_size, device) -> dict[str, tuple]:
    """Output shapes ``(C_l, H_l, W_l)`` of the 4-D nodes among ``names`` for one input."""
    net = copy.deepcopy(model).to(device).eval()
    tap = Tap(net, names, mode, strict=False)
    x = torch.zeros(1, *input_size, device=device)  # (1, C, H, W)
    try:
        with torch.no_grad():
            outs = tap(x)
    except RuntimeError as err:
        raise ValueError(
            f"a forward pass of {type(model).__name__} on an input of size (C, H, W) = {input_size} failed "
            f"({str(err).splitlines()[0]}); check the channel count and that the image size suits the model."
        ) from err
    return {n: tuple(o.shape[1:]) for n, o in outs.items() if o.dim() == 4}


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
    names, mode = layer_names(model)
    if layers is not None:  # container modules ("layer1") are valid too: their last node's output
        names = check_layer_names(layers, names + (container_names(model, names) if mode == "fx" else []))
    shapes = _shapes(model, names, mode, input_size, device)
    if layers is not None and len(shapes) < len(names):
        flat = [n for n in names if n not in shapes]
        raise ValueError(
            f"layers {flat} do not output a (b, C, H, W) map; only spatial layers can be extracted. "
            "list_layers(model, input_size) lists those."
        )
    spatial = [n for n in names if n in shapes]
    geometry = (
        layer_geometry(model, spatial, input_size, seed=seed, device=device, mode=mode) if spatial else {}
    )
    return [LayerInfo(n, shapes[n], geometry[n], module_type(model, n)) for n in spatial]


def conv_layers(
    model: nn.Module, input_size: tuple[int, int, int] = (3, 224, 224), device: str | torch.device = "cpu"
) -> list[str]:
    """A default selection of layer names.

    Rule: for torchvision-style ResNets (children ``layer1`` ... ``layer4``) the stem activation
    ``relu`` and the four stage outputs; otherwise the output of every nonlinearity (module or
    function in :data:`ACTIVATIONS`) that yields a spatial map, i.e. each conv(-norm)-activation
    block; models without such nonlinearities get every ``Conv2d`` output.
    """
    input_size = _check_input_size(input_size)
    names, mode = layer_names(model)
    children = dict(model.named_children())
    if mode == "fx" and all(f"layer{i}" in children for i in range(1, 5)) and "relu" in names:
        return ["relu", "layer1", "layer2", "layer3", "layer4"]
    shapes = _shapes(model, names, mode, input_size, device)
    kinds = {n: module_type(model, n) for n in names if n in shapes}
    chosen = [n for n, kind in kinds.items() if kind in ACTIVATIONS]
    if mode == "hooks":  # a hooked container repeats its last child's output: keep leaf modules only
        chosen = [n for n in chosen if not list(model.get_submodule(n).children())]
    chosen = chosen or [n for n, kind in kinds.items() if kind == "Conv2d"]
    if not chosen:
        raise ValueError(
            f"{type(model).__name__} has no activation or Conv2d layer with a spatial output for input size "
            f"{input_size}; pass layers=[...] explicitly (see format_layers(list_layers(model, input_size)))."
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
