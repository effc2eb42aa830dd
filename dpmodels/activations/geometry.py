"""Where a layer's map positions sit on the input, measured empirically for any model.

For each layer, the gradient of one interior output position (summed over channels) with respect to
the input is nonzero exactly on the pixels that position can see. The union of that support over a
few random inputs (a dead ReLU or a max-pool hides part of the window for any single input) gives
the receptive field; its centre, for two neighbouring interior positions, gives stride and offset
(see :class:`~dpmodels.activations.types.LayerGeometry` for the convention). Everything runs on a
deep copy of the model in eval mode, so the user's model is never touched.

When the field of a layer is clipped by the image border at the requested input size (deep layers
of small images), the same layer is measured again on probe inputs enlarged along the clipped axis
only (doubling up to ``max_probe`` pixels; enlarging one axis at a time costs far less): for convolutions and poolings, stride, offset and field do not depend on the
input size. If it stays clipped (global pooling, size-dependent layers), the axis falls back to an
even partition of the input: ``stride = H / H_l``, ``offset = (stride - 1) / 2`` and the clipped
field as measured.

Layers whose window follows from the traced graph (chains of convolutions, poolings, elementwise
operations and sums, see :mod:`dpmodels.activations.analytic`) skip the probe: their geometry is
derived, to the same values, without a backward pass. Geometry is a property of the architecture:
results are kept per process, keyed by the model's class and structure (its ``repr``), the layers,
the input size and the probe's settings, so a second call for the same architecture costs nothing.
"""

from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._graph import Layout, Tap
from .analytic import analytic_geometry
from .types import LayerGeometry

__all__ = ["clear_geometry_cache", "layer_geometry"]

_CACHE: OrderedDict[tuple, dict[str, LayerGeometry]] = OrderedDict()
_CACHE_SIZE = 64


def clear_geometry_cache() -> None:
    """Forget the geometries kept by :func:`layer_geometry` (they are recomputed on the next call)."""
    _CACHE.clear()


log = logging.getLogger("dpmodels.activations")


def _axis(support: Tensor, length: int) -> tuple[int, int, bool]:
    """``(lo, hi, clipped)`` of a 1-D boolean support along an axis of ``length`` pixels."""
    idx = torch.nonzero(support).flatten()
    lo, hi = int(idx.min()), int(idx.max())
    return lo, hi, lo == 0 or hi == length - 1


def _measure(tap: Tap, layers: Sequence[str], size: tuple[int, int], channels: int, n_inputs: int, seed: int):
    """Per layer ``(map_size, per-axis (stride, offset, rf, clipped) or None if the support is empty)``."""
    g = torch.Generator().manual_seed(seed)
    R = n_inputs
    x = torch.randn(2 * R, channels, *size, generator=g)  # (2R, C, h, w): R inputs per probed position
    x = x.to(next(iter(tap.model.parameters()), x).device).requires_grad_(True)
    outs = tap(x)
    result = {}
    for name in layers:
        o = outs[name]
        if o.dim() != 4:
            raise ValueError(f"layer {name!r} outputs shape {tuple(o.shape)}, not a (b, C, H, W) map.")
        Hl, Wl = o.shape[-2:]
        yc, xc = (Hl - 1) // 2, (Wl - 1) // 2
        y1, x1 = min(yc + 1, Hl - 1), min(xc + 1, Wl - 1)
        target = o[:R, :, yc, xc].sum() + o[R:, :, y1, x1].sum()
        if not target.requires_grad:  # the layer does not depend on the input
            result[name] = ((Hl, Wl), None)
            continue
        (grad,) = torch.autograd.grad(target, x, retain_graph=True, allow_unused=True)
        if grad is None:
            result[name] = ((Hl, Wl), None)
            continue
        seen = grad.abs().sum(1) != 0  # (2R, h, w) pixels the probed position depends on
        s0, s1 = seen[:R].any(0), seen[R:].any(0)  # (h, w) union over inputs
        if not bool(s0.any()) or not bool(s1.any()):
            result[name] = ((Hl, Wl), None)
            continue
        axes = []
        for dim, (pos, length, n) in enumerate(((yc, size[0], Hl), (xc, size[1], Wl))):
            lo0, hi0, c0 = _axis(s0.any(1 - dim), length)
            lo1, hi1, c1 = _axis(s1.any(1 - dim), length)
            centre0 = (lo0 + hi0) / 2.0
            stride = (lo1 + hi1) / 2.0 - centre0 if n > 1 else None
            offset = None if stride is None else centre0 - stride * pos
            rf = max(hi0 - lo0, hi1 - lo1) + 1
            axes.append((stride, offset, rf, c0 or c1 or n == 1))
        result[name] = ((Hl, Wl), axes)
    return result


def _rescaled(
    layouts: dict[str, Layout] | None, names: Sequence[str], dim: int, factor: int
) -> dict[str, Layout]:
    """Layouts for an input ``factor`` times as large along axis ``dim`` (a token grid grows there)."""
    out = {}
    for n in names:
        layout = (layouts or {}).get(n)
        if layout is not None and layout.kind == "tokens":
            grid = list(layout.grid)
            grid[dim] *= factor
            layout = Layout("tokens", layout.prefix, tuple(grid))
        if layout is not None:
            out[n] = layout
    return out


def layer_geometry(
    model: nn.Module,
    layers: Sequence[str],
    input_size: tuple[int, int, int],
    *,
    n_inputs: int = 4,
    seed: int = 0,
    max_probe: int = 1024,
    device: str | torch.device = "cpu",
    mode: str | None = None,
    layouts: dict[str, Layout] | None = None,
    map_sizes: dict[str, tuple[int, int]] | None = None,
) -> dict[str, LayerGeometry]:
    """Geometry of each of ``layers`` for inputs of ``input_size = (C, H, W)``.

    ``n_inputs`` random inputs per probed position; ``max_probe``: the largest side of the larger
    probe inputs used for layers whose field is clipped at ``(H, W)``; ``mode``: ``"fx"`` or
    ``"hooks"`` (default: whichever works for the model); ``layouts``: how layers that are not
    channel-first maps become maps (see :func:`list_layers`). Returns ``{layer: LayerGeometry}``.
    Layers the graph describes are derived without probing; results are cached per architecture.
    ``map_sizes`` (``{layer: (H_l, W_l)}``): the layers' map sizes if a forward pass measured them
    already (otherwise one forward pass of one input measures them, to check the derivation).
    """
    layers = list(layers)
    key = (
        type(model),
        repr(model),
        tuple(layers),
        tuple(int(v) for v in input_size),
        n_inputs,
        seed,
        max_probe,
        mode,
        tuple(sorted((layouts or {}).items())),
    )
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return dict(_CACHE[key])
    derived: dict[str, LayerGeometry] = {}
    channel_first = all(layout.kind == "nchw" for layout in (layouts or {}).values())
    if mode in (None, "fx") and channel_first and not getattr(model, "whole_image_layers", ()):
        derived = analytic_geometry(
            model,
            layers,
            input_size,
            max_probe=max_probe,
            map_sizes=map_sizes
            if map_sizes is not None
            else _map_sizes(model, layers, input_size, device, mode),
        )
    rest = [n for n in layers if n not in derived]
    probed = (
        _probe_geometry(
            model, rest, input_size, n_inputs=n_inputs, seed=seed, max_probe=max_probe, device=device,
            mode=mode, layouts=layouts,
        )
        if rest
        else {}
    )  # fmt: skip
    result = {n: derived[n] if n in derived else probed[n] for n in layers}
    _CACHE[key] = dict(result)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result


def _map_sizes(model: nn.Module, layers, input_size, device, mode) -> dict[str, tuple[int, int]]:
    """``{layer: (H_l, W_l)}`` from one forward pass of a single input (no gradient)."""
    net = copy.deepcopy(model).to(device).eval()
    x = torch.zeros(1, *input_size, device=device)
    with torch.no_grad():
        outs = Tap(net, layers, mode)(x)
    return {
        n: tuple(int(v) for v in o.shape[-2:])
        for n, o in outs.items()
        if isinstance(o, torch.Tensor) and o.dim() == 4
    }


def _probe_geometry(
    model: nn.Module,
    layers: Sequence[str],
    input_size: tuple[int, int, int],
    *,
    n_inputs: int = 4,
    seed: int = 0,
    max_probe: int = 1024,
    device: str | torch.device = "cpu",
    mode: str | None = None,
    layouts: dict[str, Layout] | None = None,
) -> dict[str, LayerGeometry]:
    """:func:`layer_geometry` measured by the gradient probe (the module's docstring)."""
    C, H, W = input_size
    net = copy.deepcopy(model).to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    tap = Tap(net, layers, mode, layouts=layouts)
    first = _measure(tap, layers, (H, W), C, n_inputs, seed)
    final = {
        n: [None if not axes or axes[d][3] else axes[d] for d in (0, 1)] for n, (_, axes) in first.items()
    }
    # layers that see the whole image at any size (a wrapper's transformer blocks): no enlarged probes
    whole = set(getattr(model, "whole_image_layers", ()))
    probe_inputs = 1  # enlarged probes serve deep layers, whose many paths leave few holes: one input each
    for dim in (0, 1):  # probe each axis on inputs enlarged along that axis only (cheaper than both)
        pending = [n for n in layers if final[n][dim] is None and n not in whole]
        size = [H, W]
        while pending and size[dim] * 2 <= max_probe:
            size[dim] *= 2
            try:
                factor = size[dim] // (H, W)[dim]
                tap_large = Tap(net, pending, tap.mode, layouts=_rescaled(layouts, pending, dim, factor))
                probe = _measure(tap_large, pending, tuple(size), C, probe_inputs, seed)
            except Exception as err:  # noqa: BLE001 - e.g. a fixed-size model (ViT asserts its size): fallback
                log.info("geometry probe at %s failed (%s); using the fallback for %s.", size, err, pending)
                break
            for name, (_, axes) in probe.items():
                if axes and not axes[dim][3]:
                    final[name][dim] = axes[dim]
            pending = [n for n in pending if final[n][dim] is None]
    geometries = {}
    for name in layers:
        map_size, measured = first[name]
        axes = final[name]
        for dim, length in enumerate((H, W)):
            if axes[dim] is None:  # still clipped: even partition of the input along this axis
                stride = length / map_size[dim]
                rf = measured[dim][2] if measured else length
                axes[dim] = (stride, (stride - 1) / 2.0, rf, True)
                log.info(
                    "layer %r: field clipped at every probe size along axis %d; even partition.", name, dim
                )
        geometries[name] = LayerGeometry(
            map_size=(int(map_size[0]), int(map_size[1])),
            input_size=(int(H), int(W)),
            stride=(float(axes[0][0]), float(axes[1][0])),
            offset=(float(axes[0][1]), float(axes[1][1])),
            receptive_field=(int(axes[0][2]), int(axes[1][2])),
        )
    return geometries
