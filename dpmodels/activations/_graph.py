"""Reading intermediate outputs of any ``torch.nn.Module``: the layer names it offers, a "tap" that
returns chosen layers' outputs from one forward pass, and a guard that restores every submodule's
train/eval flag.

Layer names are the eval-mode node names of ``torchvision.models.feature_extraction`` (FX
tracing). A model that FX cannot trace (data-dependent control flow, unsupported ops) falls back to
forward hooks on its named submodules; its layer names are then the module names of
``model.named_modules()`` and a module called several times reports its last call. A model that
reads its own layers (the wrappers of :mod:`dpmodels.nets.external`: timm, Hugging Face, open_clip)
offers ``tap_names()`` and ``forward_layers(x, names) -> {name: (b, C, H_l, W_l)}``; its mode is
``"own"``.

A node's output becomes a map ``(b, C, H_l, W_l)`` according to its :class:`Layout`: channel-first
maps as they are, channel-last ``(b, H_l, W_l, C)`` maps (ConvNeXt blocks, Swin) permuted, and a
vision transformer's tokens ``(b, T, C)`` with their first ``prefix`` tokens (class/register tokens)
dropped and the rest reshaped to the patch grid.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

__all__ = [
    "Layout",
    "Tap",
    "check_layer_names",
    "container_names",
    "first_conv_channels",
    "layer_names",
    "model_device",
    "module_type",
    "preserve_mode",
    "to_map",
]

log = logging.getLogger("dpmodels.activations")


@contextmanager
def preserve_mode(model: nn.Module) -> Iterator[None]:
    """Restore the ``training`` flag of ``model`` and of every submodule on exit (FX tracing and
    ``model.eval()`` set them all alike, which would lose a user's mixed settings)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@dataclass(frozen=True)
class Layout:
    """How a node's output holds a spatial map: ``kind`` ``"nchw"``, ``"nhwc"`` or ``"tokens"``; for
    tokens, ``prefix`` leading tokens to drop and the patch ``grid`` ``(H_l, W_l)``."""

    kind: str = "nchw"
    prefix: int = 0
    grid: tuple[int, int] | None = None


NCHW = Layout()


def to_map(output: Tensor, layout: Layout) -> Tensor:
    """``output`` as a ``(b, C, H_l, W_l)`` map according to ``layout``."""
    if layout.kind == "nhwc":
        return output.permute(0, 3, 1, 2)
    if layout.kind == "tokens":
        b, _, C = output.shape
        return output[:, layout.prefix :].transpose(1, 2).reshape(b, C, *layout.grid)  # (b, C, H_l, W_l)
    return output


def layer_names(model: nn.Module) -> tuple[list[str], str]:
    """``(names, mode)``: the model's eval-mode node names without the input placeholder and the
    final output, with ``mode = "fx"``; or, when FX tracing fails, its named submodules with
    ``mode = "hooks"``; for a model with its own layer protocol (``tap_names``/``forward_layers``),
    those names with ``mode = "own"``."""
    if _own_layers(model):
        return list(model.tap_names()), "own"
    with preserve_mode(model):
        try:
            _, names = get_graph_node_names(model, suppress_diff_warning=True)
            return [n for n in names[1:] if n != "output"], "fx"
        except Exception as err:  # noqa: BLE001 - any tracing failure has the same remedy
            log.info(
                "FX tracing of %s failed (%s: %s); reading layers with forward hooks on named modules "
                "instead (layer names are module names).",
                type(model).__name__,
                type(err).__name__,
                str(err).splitlines()[0] if str(err) else "",
            )
            return [n for n, _ in model.named_modules() if n], "hooks"


def _own_layers(model: nn.Module) -> bool:
    return callable(getattr(model, "tap_names", None)) and callable(getattr(model, "forward_layers", None))


def container_names(model: nn.Module, nodes: Sequence[str]) -> list[str]:
    """Names of submodules that contain several nodes (``"layer1"`` for ``"layer1.0.conv1"`` ...):
    valid layer names too, meaning the output of the last node inside them (as in
    ``create_feature_extractor``)."""
    prefixes = {n.rsplit(".", k)[0] for n in nodes for k in range(1, n.count(".") + 1)}
    return [m for m, _ in model.named_modules() if m and m in prefixes and m not in nodes]


def module_type(model: nn.Module, name: str) -> str:
    """What produces node ``name``: the submodule's class name (``"Conv2d"``, ``"ReLU"``) or, for a
    function node such as ``layer1.0.add`` or ``relu_1``, the function's name (``"add"``)."""
    if _own_layers(model) and callable(getattr(model, "layer_type", None)):
        return model.layer_type(name)
    for candidate in (name, re.sub(r"_\d+$", "", name)):
        try:
            return type(model.get_submodule(candidate)).__name__
        except AttributeError:
            continue
    return re.sub(r"_\d+$", "", name.rsplit(".", 1)[-1])


def check_layer_names(requested: Sequence[str], valid: Sequence[str]) -> list[str]:
    """``requested`` as a list, or a ``ValueError`` naming the unknown ones, close matches and all
    valid names."""
    if isinstance(requested, str):
        requested = [requested]
    requested = list(requested)
    if not requested:
        raise ValueError("layers must name at least one layer; see list_layers(model, input_size).")
    unknown = [n for n in requested if n not in valid]
    if unknown:
        hints = []
        for n in unknown:
            close = difflib.get_close_matches(n, valid, n=3)
            hints.append(f"{n!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
        raise ValueError(
            f"unknown layer name(s) {'; '.join(hints)}. Valid names: {', '.join(valid)}. "
            "format_layers(list_layers(model, input_size)) shows them with their shapes."
        )
    if len(set(requested)) != len(requested):
        raise ValueError(f"layers must not repeat a name, got {requested}.")
    return requested


class Tap:
    """Outputs of ``layers`` from one forward pass: ``Tap(model, layers)(x) -> {name: Tensor}``.

    Uses ``create_feature_extractor`` (shares the model's submodules; the caller controls
    train/eval and grad mode) or, for models FX cannot trace, forward hooks that clone each output
    (an in-place ReLU later in the network would overwrite it otherwise). ``mode`` says which.
    With ``strict=False`` hooked modules that returned no tensor are left out instead of raising.
    ``layouts`` (``{layer: Layout}``) turns those layers' outputs into ``(b, C, H_l, W_l)`` maps.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        mode: str | None = None,
        strict: bool = True,
        layouts: dict[str, Layout] | None = None,
    ):
        self.model, self.layers, self.strict = model, list(layers), strict
        self.layouts = dict(layouts or {})
        self.mode = mode or layer_names(model)[1]
        self.extractor: nn.Module | None = None
        if self.mode == "fx":
            with preserve_mode(model):
                try:
                    self.extractor = create_feature_extractor(
                        model, return_nodes=self.layers, suppress_diff_warning=True
                    )
                except Exception as err:  # noqa: BLE001
                    log.info("create_feature_extractor failed (%s); using forward hooks instead.", err)
                    self.mode = "hooks"
        if self.mode == "own":
            check_layer_names(self.layers, model.tap_names())
        if self.mode == "hooks":
            modules = dict(model.named_modules())
            missing = [n for n in self.layers if n not in modules]
            if missing:
                check_layer_names(missing, [n for n in modules if n])

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        """``x``: ``(b, C, H, W)`` input batch -> ``{layer: output}`` in the order of ``layers`` (maps
        for the layers with a layout; other outputs, tensors or not, as the model returns them)."""
        outs = self._outputs(x)
        return {n: to_map(o, self.layouts[n]) if n in self.layouts else o for n, o in outs.items()}

    def _outputs(self, x: Tensor) -> dict:
        if self.mode == "own":
            return dict(self.model.forward_layers(x, self.layers))
        if self.extractor is not None:
            self.extractor.train(self.model.training)
            out = self.extractor(x)
            return {n: out[n] for n in self.layers}
        captured: dict[str, Tensor] = {}
        handles = []
        for name in self.layers:

            def hook(_module, _inputs, output, name=name):
                if isinstance(output, Tensor):
                    captured[name] = output.clone()

            handles.append(self.model.get_submodule(name).register_forward_hook(hook))
        try:
            self.model(x)
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in self.layers if n not in captured]
        if missing and self.strict:
            raise ValueError(
                f"layers {missing} produced no tensor output in a forward pass (not called, or they return "
                "tuples); choose other layers from list_layers(model, input_size)."
            )
        return captured


def first_conv_channels(model: nn.Module) -> int | None:
    """``in_channels`` of the first ``Conv2d`` in module order, or ``None`` if there is none."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return None


def model_device(model: nn.Module) -> torch.device | None:
    """The device of the model's first parameter or buffer (``None`` for a parameter-free model)."""
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return None
