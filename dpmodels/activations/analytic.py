"""Layer geometry read off the traced graph, without a backward pass.

For a chain of convolutions and poolings the geometry of every map follows from the layers'
hyperparameters: map position ``q`` of a layer with kernel ``k``, stride ``s``, padding ``p`` and
dilation ``d`` reads positions ``q s - p ... q s - p + (k - 1) d`` of its input map, so if position
``q`` of that input map sees input pixels ``[a + S q, b + S q]``, the layer's position ``q`` sees
``[a - S p + S s q, b + S ((k - 1) d - p) + S s q]``. Elementwise operations (normalisation in eval
mode, activations, dropout) keep the window; sums, products and channel concatenations of maps of
the same stride take the union of their operands' windows. Any other operation (global pooling,
attention, reshapes, interpolation) makes the map "unknown", and so does everything computed from
it; those layers are left to the empirical probe of :mod:`dpmodels.activations.geometry`.

:func:`analytic_geometry` returns exactly what the probe measures when its gradient reaches the
extremes of the window: stride, offset and receptive field of an interior position, measured again
on inputs enlarged along an axis where the field is clipped by the border at the requested size,
and the even-partition fallback where it stays clipped up to ``max_probe`` pixels. It answers in
milliseconds where the probe costs a backward pass per layer and per enlarged input.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.feature_extraction import NodePathTracer

from ._graph import preserve_mode
from .types import LayerGeometry

__all__ = ["analytic_geometry", "graph_windows"]


@dataclass(frozen=True)
class _Axis:
    """Along one axis: position ``q`` of the map sees input pixels ``[a + S q, b + S q]``; ``n``
    positions."""

    a: float
    b: float
    S: float
    n: int


_CONST = "const"  # a value that does not depend on the input's pixels (parameters, sizes, numbers)
_UNKNOWN = None  # a value whose dependence on the input this module does not model

_ELEMENTWISE_MODULES: tuple[type, ...] = (
    nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid,
    nn.Tanh, nn.LeakyReLU, nn.ELU, nn.PReLU, nn.Mish, nn.Softplus, nn.SELU, nn.CELU, nn.Hardtanh,
    nn.Dropout, nn.Dropout2d, nn.Identity, torchvision.ops.FrozenBatchNorm2d,
    torchvision.ops.StochasticDepth,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.silu, F.gelu, F.hardswish, F.hardsigmoid, F.hardtanh, F.leaky_relu, F.elu,
    F.sigmoid, F.tanh, F.dropout, F.mish, torch.relu, torch.sigmoid, torch.tanh, torch.clamp,
    operator.neg, torch.neg,
}  # fmt: skip
_BINARY_FUNCTIONS = {
    operator.add, operator.iadd, operator.mul, operator.imul, operator.sub, operator.isub,
    operator.truediv, torch.add, torch.mul, torch.sub,
}  # fmt: skip
_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "clamp", "clamp_", "clamp_min", "contiguous",
    "clone", "add", "add_", "mul", "mul_", "sub", "div", "neg",
}  # fmt: skip
_SIZE_METHODS = {"size", "dim"}


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window(m: nn.Module, x: tuple[_Axis, _Axis]) -> tuple[_Axis, _Axis] | None:
    """The windows after a convolution or pooling module ``m`` (``None`` if ``m`` is neither, or has
    settings this module does not model)."""
    ceil = False
    if isinstance(m, nn.Conv2d):
        k, s, d = _pair(m.kernel_size), _pair(m.stride), _pair(m.dilation)
        if isinstance(m.padding, str):
            if m.padding == "valid":
                pads = [(0, 0), (0, 0)]
            else:  # "same" (stride 1): the total padding d (k - 1), the extra pixel on the far side
                pads = [(d[i] * (k[i] - 1) // 2, d[i] * (k[i] - 1) - d[i] * (k[i] - 1) // 2) for i in (0, 1)]
        else:
            pads = [(p, p) for p in _pair(m.padding)]
    elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        k = _pair(m.kernel_size)
        s = _pair(m.stride if m.stride is not None else m.kernel_size)
        d = _pair(getattr(m, "dilation", 1))
        pads = [(p, p) for p in _pair(m.padding)]
        ceil = bool(m.ceil_mode)
    else:
        return None
    out = []
    for i, ax in enumerate(x):
        (lo, hi), span = pads[i], d[i] * (k[i] - 1)
        steps = (ax.n + lo + hi - span - 1) / s[i]
        n = (math.ceil(steps) if ceil else math.floor(steps)) + 1
        if ceil and (n - 1) * s[i] >= ax.n + lo:  # the last window must start inside the input or its padding
            n -= 1
        if n < 1:
            return None
        out.append(_Axis(ax.a - ax.S * lo, ax.b + ax.S * (span - lo), ax.S * s[i], n))
    return out[0], out[1]


def _module(m: nn.Module, x):
    """The state after leaf module ``m`` applied to a state ``x``."""
    if x is _CONST or x is _UNKNOWN:
        return x
    if isinstance(m, _ELEMENTWISE_MODULES):
        return x
    if type(m) is nn.Sequential or isinstance(m, torchvision.ops.Conv2dNormActivation):
        for child in m:
            x = _module(child, x)
        return x
    return _window(m, x)


def _union(states: list):
    """The state of an elementwise combination of ``states`` (maps of one stride and size)."""
    maps = [s for s in states if s is not _CONST]
    if any(s is _UNKNOWN for s in maps):
        return _UNKNOWN
    if not maps:
        return _CONST
    first = maps[0]
    for s in maps[1:]:
        if any((u.S, u.n) != (v.S, v.n) for u, v in zip(s, first, strict=True)):
            return _UNKNOWN
    return tuple(
        _Axis(min(m[i].a for m in maps), max(m[i].b for m in maps), first[i].S, first[i].n) for i in (0, 1)
    )


def _state_of(arg, states: dict):
    if isinstance(arg, torch.fx.Node):
        return states.get(arg, _UNKNOWN)
    if isinstance(arg, tuple | list):
        return _union([_state_of(a, states) for a in arg]) if arg else _CONST
    return _CONST  # numbers, None, strings


def _trace(model: nn.Module) -> tuple[torch.fx.Graph, dict] | None:
    """The eval-mode graph and node names of ``model`` as ``torchvision``'s feature extraction
    names them, or ``None`` if FX cannot trace it."""
    leaves = [
        cls for cls in vars(torchvision.ops).values() if isinstance(cls, type) and issubclass(cls, nn.Module)
    ]
    tracer = NodePathTracer(autowrap_modules=(math, torchvision.ops), leaf_modules=leaves)
    with preserve_mode(model):
        model.eval()
        try:
            graph = tracer.trace(model)
        except Exception:  # noqa: BLE001 - whatever stops tracing, the probe handles the model
            return None
    return graph, dict(tracer.node_to_qualname)


def graph_windows(
    model: nn.Module, size: tuple[int, int], traced=None
) -> dict[str, tuple[_Axis, _Axis] | None]:
    """``{node name: (y axis, x axis) window or None}`` for an input of ``size = (H, W)``: every node
    of the traced graph whose dependence on the input's pixels is a window (``None`` for the rest).
    ``traced``: the result of a previous trace of ``model`` (tracing is the costly part)."""
    traced = traced if traced is not None else _trace(model)
    if traced is None:
        return {}
    graph, names = traced
    modules = dict(model.named_modules())
    states: dict = {}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for node in graph.nodes:
        if node.op == "placeholder":
            states[node] = (
                (_Axis(0.0, 0.0, 1.0, size[0]), _Axis(0.0, 0.0, 1.0, size[1]))
                if node is placeholders[0]
                else _CONST
            )
        elif node.op == "get_attr":
            states[node] = _CONST
        elif node.op == "call_module":
            states[node] = (
                _module(modules[node.target], _state_of(node.args[0], states)) if node.args else _UNKNOWN
            )
        elif node.op == "call_function":
            states[node] = _function(node, states)
        elif node.op == "call_method":
            if node.target in _SIZE_METHODS:
                states[node] = _CONST
            elif node.target in _METHODS:
                states[node] = _union([_state_of(a, states) for a in node.args])
            else:
                states[node] = _UNKNOWN
    return {names[n]: (s if isinstance(s, tuple) else None) for n, s in states.items() if n in names}


def _padded(x, pads: list[tuple[int, int]]):
    """The windows after zero padding ``pads = [(before, after) along y, along x]``."""
    out = []
    for ax, (lo, hi) in zip(x, pads, strict=True):
        if lo < 0 or hi < 0:
            return _UNKNOWN  # cropping
        out.append(_Axis(ax.a - ax.S * lo, ax.b - ax.S * lo, ax.S, ax.n + lo + hi))
    return tuple(out)


def _function(node: torch.fx.Node, states: dict):
    fn = node.target
    x = _state_of(node.args[0], states) if node.args else _UNKNOWN
    rule = getattr(fn, "geometry_padding", None)  # a shape-dependent pad that says how it pads
    if rule is not None and isinstance(x, tuple):
        if any(isinstance(a, torch.fx.Node) for a in node.args[1:]) or node.kwargs:
            return _UNKNOWN
        return _padded(x, [rule(ax.n, *node.args[1:]) for ax in x])
    if fn is F.pad and isinstance(x, tuple):
        pads = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        if not isinstance(pads, tuple | list) or len(pads) != 4 or any(not isinstance(p, int) for p in pads):
            return _UNKNOWN
        return _padded(x, [(pads[2], pads[3]), (pads[0], pads[1])]) if mode == "constant" else _UNKNOWN
    if fn is getattr or fn is operator.getitem and _state_of(node.args[0], states) is _CONST:
        return _CONST
    if fn in _ELEMENTWISE_FUNCTIONS:
        return _state_of(node.args[0], states) if node.args else _UNKNOWN
    if fn in _BINARY_FUNCTIONS:
        return _union([_state_of(a, states) for a in node.args])
    if fn is torch.cat:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        return _state_of(node.args[0], states) if dim in (1, -3) else _UNKNOWN
    return _UNKNOWN


def _node_of(name: str, names: Sequence[str]) -> str:
    """The node a requested layer name stands for (a container's last node)."""
    if name in names:
        return name
    inside = [n for n in names if n.startswith(name + ".")]
    return inside[-1] if inside else name


def _axis_geometry(windows_at, dim: int, length: int, max_probe: int):
    """``(stride, offset, rf)`` along axis ``dim`` as the probe measures it, or ``None`` if a window
    is missing at some size the probe would use."""

    def measure(ax: _Axis, L: int):
        yc = (ax.n - 1) // 2
        y1 = min(yc + 1, ax.n - 1)
        lo0, hi0, lo1, hi1 = ax.a + ax.S * yc, ax.b + ax.S * yc, ax.a + ax.S * y1, ax.b + ax.S * y1
        clipped = lo0 <= 0 or hi0 >= L - 1 or lo1 <= 0 or hi1 >= L - 1 or ax.n == 1
        seen = max(min(hi0, L - 1) - max(lo0, 0), min(hi1, L - 1) - max(lo1, 0)) + 1
        return clipped, seen

    first = windows_at(None)
    if first is None:
        return None
    ax0 = first[dim]
    clipped, seen = measure(ax0, length)
    L = length
    while clipped and L * 2 <= max_probe:
        L *= 2
        w = windows_at((dim, L))
        if w is None:
            return None
        clipped, _ = measure(w[dim], L)
    if not clipped:
        return ax0.S, (ax0.a + ax0.b) / 2.0, int(round(ax0.b - ax0.a + 1))
    stride = length / ax0.n  # clipped at every probe size: the probe's even partition
    return stride, (stride - 1) / 2.0, int(round(seen))


def analytic_geometry(
    model: nn.Module,
    layers: Sequence[str],
    input_size: tuple[int, int, int],
    *,
    max_probe: int = 1024,
    map_sizes: dict[str, tuple[int, int]] | None = None,
) -> dict[str, LayerGeometry]:
    """Geometry of those of ``layers`` whose window follows from the graph (see the module's
    docstring), for inputs of ``input_size = (C, H, W)``; layers it cannot derive are left out.
    ``map_sizes`` (``{layer: (H_l, W_l)}``, measured by a forward pass): layers whose derived map
    size disagrees are left out too, so the derivation never overrides what the model does."""
    _, H, W = input_size
    traced = _trace(model)
    if traced is None:
        return {}
    names = list(traced[1].values())
    cache: dict = {}

    def windows(key):
        if key not in cache:
            size = [H, W]
            if key is not None:
                size[key[0]] = key[1]
            cache[key] = graph_windows(model, tuple(size), traced)
        return cache[key]

    result = {}
    for layer in layers:
        node = _node_of(layer, names)
        first = windows(None).get(node)
        if first is None:
            continue
        shape = (first[0].n, first[1].n)
        if map_sizes is not None and tuple(map_sizes.get(layer, shape)) != shape:
            continue
        axes = [
            _axis_geometry(lambda key, node=node: windows(key).get(node), dim, length, max_probe)
            for dim, length in enumerate((H, W))
        ]
        if any(a is None for a in axes):
            continue
        result[layer] = LayerGeometry(
            map_size=shape,
            input_size=(int(H), int(W)),
            stride=(float(axes[0][0]), float(axes[1][0])),
            offset=(float(axes[0][1]), float(axes[1][1])),
            receptive_field=(int(axes[0][2]), int(axes[1][2])),
        )
    return result
