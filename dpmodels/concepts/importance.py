"""Which concepts (clusters) of a layer carry a class's decision: causal, occlusion-style scores.

For an image, a layer and a class ``c``: a forward hook on the layer replaces every position of
concept ``k`` (the positions whose most probable cluster is ``k``) by the layer's reference mean
(the mean activation over the reference run's positions, raw channel space), the rest of the
network runs, and the drop of class ``c``'s logit is the concept's **occlusion score**
``logit_c(x) - logit_c(x without k)``. The second estimator is a **Sobol total index** over random
keep/remove masks of the image's concepts (as in CRAFT, Fel et al. 2023): with ``N`` masks
``A`` (each concept kept with probability 1/2) and ``f(A)`` the logit with the removed concepts
replaced, Jansen's estimator ``E[(f(A) - f(A_B^k))^2] / (2 Var f)`` is, for independent fair bits,
``E[(f(A) - f(flip_k A))^2] / (4 Var f)``: the estimator used here (``N (K + 1)`` forward passes;
``Var f`` over all of them, since a flipped uniform mask is a uniform mask too).
Per layer, class and concept the scores are averaged over the images where the concept occurs,
with a 95 % Student-t interval over those images.

The layer must be a module of the network (its forward hook is where positions are replaced),
called once per forward pass, and the network's output must be class logits ``(b, classes)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import Tensor, nn

from ..activations import Layout, preserve_mode, to_map
from ..activations.layers import list_layers
from ..activations.smooth import smooth_maps

__all__ = [
    "ConceptOcclusion",
    "check_importance",
    "concept_importance",
    "deletion_curves",
    "summarize_importance",
]


def _no_head(model: nn.Module, got: str) -> ValueError:
    name = getattr(model, "description", type(model).__name__)
    return ValueError(
        f"concept importance needs class logits (b, classes) from the network, but {name} {got}: it has no "
        "classifier head; use a classifier network (one whose output is class logits) or leave concept "
        "importance off."
    )


def check_importance(
    model: nn.Module,
    layers: Sequence[str] | None,
    input_shape: tuple[int, int, int],
    device: str | torch.device = "cpu",
) -> list[str]:
    """Whether concept importance can run on ``layers`` of ``model`` (``None``: the default
    selection, :func:`~dpmodels.activations.conv_layers`) for inputs ``input_shape = (C, H, W)``,
    checked before any extraction or fit (one forward pass of a blank image). Raises one
    ``ValueError`` when the network has no classifier head (a model that says so with
    ``has_classifier = False``, a timm model built with ``num_classes=0``, or an output that is not
    ``(b, classes)``) or a layer is not a module whose output a forward hook can replace.
    Returns the layer names."""
    inner = getattr(model, "model", model)
    if getattr(inner, "num_classes", None) == 0:
        raise _no_head(model, "was built with num_classes=0")
    if getattr(model, "has_classifier", None) is False:
        raise _no_head(model, "is a feature extractor (no classification layer)")
    device = torch.device(device)
    with preserve_mode(model), torch.no_grad():
        model.eval()
        out = model(torch.zeros(1, *input_shape, device=device))
    if not isinstance(out, Tensor) or out.dim() != 2:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise _no_head(model, f"returns {got}")
    from ..activations.layers import conv_layers

    names = list(layers) if layers is not None else conv_layers(model, input_shape, device)
    for layer in names:
        if layer_module(model, layer) is None:
            raise ValueError(
                f"concept importance replaces positions in a forward hook, so the layer must be a module of "
                f"{type(model).__name__}; {layer!r} is not one. Choose module outputs (block or stage names "
                "from dpmodels.activations.list_layers) or leave concept importance off."
            )
    return names


def layer_module(model: nn.Module, layer: str) -> nn.Module | None:
    """The module whose output is ``layer``: a module of ``model`` of that name, or for a wrapped
    model of another library (``dpmodels.nets.external.LayerModel``: timm, open_clip) the module of
    that name inside it; ``None`` when there is none (a graph node such as ``add``)."""
    if not layer:
        return None
    modules = dict(model.named_modules())
    if layer in modules:
        return modules[layer]
    inner = getattr(model, "model", None)
    if hasattr(model, "tap_names") and isinstance(inner, nn.Module) and layer in model.tap_names():
        return dict(inner.named_modules()).get(layer)
    return None


def _raw_layout(
    model: nn.Module, layer: str, module: nn.Module, shape: tuple[int, int, int], input_shape, device
) -> Layout:
    """How ``module``'s own output holds the ``(C, H_l, W_l)`` map (a wrapped model's layer is listed
    as a map; its module may give channel-last maps or tokens): probed with one blank forward pass."""
    seen = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with preserve_mode(model), torch.no_grad():
            model.eval()
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        handle.remove()
    C, H, W = shape
    out = seen[0] if len(seen) == 1 else None
    if isinstance(out, Tensor) and out.dim() == 4 and tuple(out.shape[1:]) == (C, H, W):
        return Layout("nchw")
    if isinstance(out, Tensor) and out.dim() == 4 and tuple(out.shape[1:]) == (H, W, C):
        return Layout("nhwc")
    if isinstance(out, Tensor) and out.dim() == 3 and out.shape[2] == C and out.shape[1] >= H * W:
        return Layout("tokens", int(out.shape[1]) - H * W, (H, W))
    got = tuple(out.shape) if isinstance(out, Tensor) else f"{len(seen)} outputs"
    raise ValueError(
        f"layer {layer!r} is a {(C, H, W)} map but its module gives {got}, not that map (channels first or last, or tokens); "
        "concept importance cannot replace its positions: choose another layer."
    )


def _from_map(new: Tensor, out: Tensor, layout: Layout) -> Tensor:
    """A ``(b, C, H_l, W_l)`` map back into the layer's own output layout (``out``'s)."""
    if layout.kind == "nhwc":
        return new.permute(0, 2, 3, 1).contiguous()
    if layout.kind == "tokens":
        return torch.cat([out[:, : layout.prefix], new.flatten(2).transpose(1, 2)], 1)
    return new


class ConceptOcclusion:
    """A forward hook on ``layer`` of ``model`` that captures the layer's map and, while ``mask``
    ``(b, H_l, W_l)`` bool is set, replaces the masked positions by ``reference_mean (C,)``."""

    def __init__(
        self, model: nn.Module, layer: str, reference_mean: Tensor, input_shape: tuple[int, int, int]
    ):
        module = layer_module(model, layer)
        if module is None:
            raise ValueError(
                f"concept importance replaces positions in a forward hook, so the layer must be a module of "
                f"{type(model).__name__}; {layer!r} is a graph node without a module of that name. Choose a "
                "module output (e.g. a block or stage name from dpmodels.activations.list_layers)."
            )
        device = next(iter(model.parameters())).device
        (info,) = list_layers(model, input_shape, device, layers=[layer])
        self.layout, self.shape, self.geometry = info.layout, info.shape, info.geometry  # shape (C, H_l, W_l)
        if module is not dict(model.named_modules()).get(layer):  # a wrapped model's module
            self.layout = _raw_layout(model, layer, module, info.shape, input_shape, device)
        self.confidence: Tensor | None = None  # (I, H_l, W_l) after concept_importance
        if int(reference_mean.shape[0]) != self.shape[0]:
            raise ValueError(
                f"layer {layer!r} has {self.shape[0]} channels, the reference mean {reference_mean.shape[0]}: "
                "the fit belongs to another network or width."
            )
        self.mean = reference_mean.float().to(device)
        self.mask: Tensor | None = None
        self.captured: Tensor | None = None
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, out):
        self.calls += 1
        m = to_map(out, self.layout)  # (b, C, H_l, W_l)
        if self.mask is None:
            self.captured = m.detach().clone()
            return None
        new = torch.where(self.mask[:, None].to(m.device), self.mean[None, :, None, None].to(m.dtype), m)
        return _from_map(new, out, self.layout)

    def remove(self) -> None:
        self.handle.remove()


@dataclass
class _Image:
    x: Tensor  # (C, H, W) network input (preprocessed)
    labels: Tensor  # (H_l, W_l) concept of every position
    logits: Tensor  # (classes,)


def _forward(model, hook: ConceptOcclusion, x: Tensor, masks: Tensor | None, batch_size: int) -> Tensor:
    """Logits ``(n, classes)`` of ``x (n, C, H, W)`` with ``masks (n, H_l, W_l)`` removed."""
    outs = []
    for i in range(0, len(x), batch_size):
        hook.mask = None if masks is None else masks[i : i + batch_size]
        hook.calls = 0
        out = model(x[i : i + batch_size])
        if hook.calls != 1:
            raise ValueError(
                f"the layer's module ran {hook.calls} times in one forward pass; concept importance needs a "
                "module called once (choose another layer)."
            )
        if not isinstance(out, Tensor) or out.dim() != 2:
            raise _no_head(
                model, f"returns {tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}"
            )
        outs.append(out.float())
    hook.mask = None
    return torch.cat(outs)


def _t_interval(values: np.ndarray) -> tuple[float, float, float]:
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if len(v) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return mean, mean - half, mean + half


def concept_importance(
    model: nn.Module,
    images: Tensor,
    layer: str,
    fit,
    *,
    classes: Sequence[int] | None = None,
    sobol_masks: int = 16,
    seed: int = 0,
    batch_size: int = 32,
    device: str = "cpu",
    return_images: bool = False,
):
    """Per-image concept scores of ``layer`` (``fit``: the layer's
    :class:`~dpmodels.analysis.fitfile.LayerFitFile`) on ``images`` ``(I, C, H, W)`` in ``[0, 1]``.

    Returns a ``DataFrame`` with one row per image, class and concept present in the image:
    ``layer, image, class, concept, area`` (share of the image's positions), ``logit`` (unaltered),
    ``occlusion`` (logit drop when the concept is removed) and ``sobol_total`` (NaN with
    ``sobol_masks=0``); ``frame.attrs`` holds the layer's ``geometry`` and the ``labels`` and
    ``confidence`` maps ``(I, H_l, W_l)`` of every position (for the figures). ``classes``: classes to explain (default: each image's top-1 class).
    ``return_images``: also return the images as scored (network input, concept labels, logits)."""
    model = model.to(device)
    x_all = images.float().to(device)
    normalize = fit.extraction.get("normalize")
    if normalize is not None:
        mean, std = (
            torch.as_tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1).to(device) for v in normalize
        )
        x_all = (x_all - mean) / std
    hook = ConceptOcclusion(model, layer, fit.reference_mean, tuple(x_all.shape[1:]))
    rng = np.random.default_rng([seed, 29])
    rows, kept = [], []
    smooth = fit.extraction.get("smooth")
    try:
        with preserve_mode(model), torch.no_grad():
            model.eval()
            logits0 = _forward(model, hook, x_all, None, batch_size)  # (I, classes)
            labels_all, conf_all = [], []
            for i in range(0, len(x_all), batch_size):
                hook.mask = None
                model(x_all[i : i + batch_size])
                m = hook.captured if smooth is None else smooth_maps(hook.captured, smooth)
                lab, conf = _labels(m, fit)
                labels_all.append(lab)
                conf_all.append(conf)
            labels_all = torch.cat(labels_all)  # (I, H_l, W_l)
            hook.confidence = torch.cat(conf_all)  # (I, H_l, W_l)
            n_cls = logits0.shape[1]
            for c in classes or []:
                if not 0 <= int(c) < n_cls:
                    raise ValueError(f"importance.classes holds {c}, the network has classes 0..{n_cls - 1}.")
            for i in range(len(x_all)):
                img = _Image(x_all[i], labels_all[i], logits0[i])
                kept.append(img)
                targets = [int(img.logits.argmax())] if not classes else [int(c) for c in classes]
                rows += _image_rows(model, hook, img, i, layer, targets, sobol_masks, rng, batch_size)
    finally:
        hook.remove()
    frame = pd.DataFrame(rows)
    frame.attrs.update(geometry=hook.geometry, labels=labels_all.cpu(), confidence=hook.confidence.cpu())
    return (frame, kept) if return_images else frame


def _labels(m: Tensor, fit) -> tuple[Tensor, Tensor]:
    """The most probable cluster of every position of maps ``m (b, C, H_l, W_l)`` and its
    responsibility, each ``(b, H_l, W_l)``."""
    b, C, H, W = m.shape
    pts = m.permute(0, 2, 3, 1).reshape(-1, C).float().cpu()
    if fit.transform is not None:
        pts = fit.transform.apply(pts)
    conf, labels = fit.posterior.log_responsibilities(pts)[0].max(-1)  # (b H_l W_l,)
    return labels.reshape(b, H, W), conf.exp().reshape(b, H, W)


def _image_rows(model, hook, img: _Image, i: int, layer: str, targets, sobol_masks, rng, batch_size):
    concepts = torch.unique(img.labels).tolist()
    K = len(concepts)
    lab = img.labels.to(img.x.device)
    onehot = torch.stack([lab == k for k in concepts])  # (K, H_l, W_l)
    area = onehot.flatten(1).float().mean(1).cpu().numpy()
    x_rep = img.x[None].expand(K, -1, -1, -1)
    occluded = _forward(model, hook, x_rep, onehot, batch_size)  # (K, classes)
    sobol = np.full((len(targets), K), np.nan)
    if sobol_masks > 0 and K > 1:
        A = torch.from_numpy(rng.random((sobol_masks, K)) < 0.5).to(lab.device)  # (N, K) keep bits
        flips = A[:, None, :] ^ torch.eye(K, dtype=torch.bool, device=lab.device)[None]  # (N, K, K)
        keeps = torch.cat([A, flips.reshape(-1, K)])  # (N + N K, K)
        removed = ((~keeps).float() @ onehot.flatten(1).float()).reshape(-1, *lab.shape) > 0  # (M, H_l, W_l)
        f = _forward(model, hook, img.x[None].expand(len(keeps), -1, -1, -1), removed, batch_size)
        for t, c in enumerate(targets):
            fa = f[:sobol_masks, c].double()  # (N,)
            fflip = f[sobol_masks:, c].double().reshape(sobol_masks, K)  # (N, K)
            var = float(f[:, c].double().var())  # every evaluated mask is a uniform draw (a flip of one too)
            if var > 0:
                sobol[t] = (((fa[:, None] - fflip) ** 2).mean(0) / (4 * var)).cpu().numpy()
    rows = []
    for t, c in enumerate(targets):
        for j, k in enumerate(concepts):
            rows.append({
                "layer": layer, "image": i, "class": c, "concept": int(k), "area": float(area[j]),
                "logit": float(img.logits[c]), "occlusion": float(img.logits[c] - occluded[j, c]),
                "sobol_total": float(sobol[t, j]),
            })  # fmt: skip
    return rows


def summarize_importance(per_image: pd.DataFrame) -> pd.DataFrame:
    """``importance.csv``: one row per layer, class, concept and estimator (``occlusion``,
    ``sobol_total``) with the mean ``score`` over the images where the concept occurs, its 95 %
    Student-t interval ``low, high`` over those images, ``n_images`` and ``mean_area``."""
    rows = []
    for (layer, c, k), g in per_image.groupby(["layer", "class", "concept"], sort=True):
        for est in ("occlusion", "sobol_total"):
            score, low, high = _t_interval(g[est].to_numpy(dtype=float))
            rows.append({"layer": layer, "class": int(c), "concept": int(k), "estimator": est, "score": score,
                         "low": low, "high": high, "n_images": int(g[est].notna().sum()),
                         "mean_area": float(g["area"].mean())})  # fmt: skip
    return pd.DataFrame(rows)


def deletion_curves(
    model: nn.Module,
    hook: ConceptOcclusion,
    img,
    target: int,
    orders: dict[str, Sequence[int]],
    batch_size: int = 32,
) -> dict[str, np.ndarray]:
    """For each named order of the image's concepts, the normalised logit of class ``target`` after
    removing the first ``0, 1, ..., K`` concepts: ``(logit_t - logit_K) / (logit_0 - logit_K)``
    (1 = unaltered, 0 = every concept removed), ``(K + 1,)`` per order."""
    out = {}
    lab = img.labels.to(img.x.device)
    with torch.no_grad():
        for name, order in orders.items():
            masks = [torch.zeros_like(lab, dtype=torch.bool)]
            for k in order:
                masks.append(masks[-1] | (lab == k))
            masks = torch.stack(masks)  # (K + 1, H_l, W_l)
            f = _forward(model, hook, img.x[None].expand(len(masks), -1, -1, -1), masks, batch_size)[
                :, target
            ]
            f = f.double().cpu().numpy()
            span = f[0] - f[-1]
            out[name] = (f - f[-1]) / span if abs(span) > 1e-12 else np.full_like(f, np.nan)
    return out
