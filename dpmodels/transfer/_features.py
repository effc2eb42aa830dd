"""Frozen layer outputs of any ``torch.nn.Module``, reduced per batch as they stream past.

Layers are named as in ``model.named_modules()`` (e.g. ``"features.3"``). A forward hook reduces a
layer's output ``(n, C, H_l, W_l)`` (or ``(n, C)``) right away, before any in-place op that follows
can overwrite it, so only the reduced features are kept:

* ``"pool"``: global average over the map, ``(n, C)``;
* ``"positions"``: ``P`` map positions per image, drawn without replacement from a generator seeded
  per layer, so two networks with the same map size see the same positions, ``(n * P, C)``;
* ``"flatten"``: the whole map as one vector, ``(n, C * H_l * W_l)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data.images import ImageSet

__all__ = ["REDUCTIONS", "check_layers", "layer_features"]

REDUCTIONS = ("pool", "positions", "flatten")


def check_layers(model: nn.Module, layers: Sequence[str], what: str = "model") -> dict[str, nn.Module]:
    """The modules named ``layers`` in ``model`` (``named_modules`` names); ValueError if one is missing."""
    if isinstance(layers, str):
        layers = [layers]
    modules = dict(model.named_modules())
    missing = [name for name in layers if name not in modules or name == ""]
    if missing:
        known = [n for n in modules if n][:25]
        raise ValueError(
            f"{what} has no layer(s) {missing}; layers are named as in model.named_modules(), e.g. {known}."
        )
    if not layers:
        raise ValueError(f"name at least one layer of the {what}, got an empty list.")
    return {name: modules[name] for name in layers}


def _images(images: ImageSet | Tensor) -> Tensor:
    x = images.images if isinstance(images, ImageSet) else images
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"images must be an ImageSet or a float tensor (I, C, H, W), got {shape}.")
    return x


def _reducer(mode: str, positions_per_image: int, seed: int):
    g = torch.Generator().manual_seed(seed)  # one per layer: positions depend on the batches only

    def reduce(out: Tensor) -> Tensor:
        if out.dim() == 2:  # already a vector per image, e.g. after a Linear layer
            return out.clone()
        if out.dim() != 4:
            raise ValueError(f"expected a layer output (n, C, H, W) or (n, C), got {tuple(out.shape)}.")
        n, C, H, W = out.shape
        if mode == "pool":
            return out.mean(dim=(2, 3))  # (n, C)
        if mode == "flatten":
            return out.reshape(n, C * H * W).clone()  # (n, C*H*W)
        P = min(positions_per_image, H * W)
        pick = torch.rand(n, H * W, generator=g).argsort(1)[:, :P].to(out.device)  # (n, P)
        flat = out.reshape(n, C, H * W)  # (n, C, H*W)
        chosen = torch.gather(flat, 2, pick.unsqueeze(1).expand(n, C, P))  # (n, C, P)
        return chosen.permute(0, 2, 1).reshape(n * P, C)  # (n*P, C)

    return reduce


def layer_features(
    model: nn.Module,
    images: ImageSet | Tensor,
    layers: Sequence[str],
    *,
    reduce: str = "pool",
    positions_per_image: int = 16,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = False,
    shapes: dict[str, tuple[int, ...]] | None = None,
) -> dict[str, Tensor]:
    """Reduced outputs of ``layers`` for ``images`` ``(I, C, H, W)``, the model in eval mode and
    without gradients (its training flag is restored afterwards). Returns float32 CPU tensors
    ``(I, C_l)`` (pool), ``(I * P, C_l)`` (positions) or ``(I, C_l * H_l * W_l)`` (flatten).
    ``shapes``, when given, receives each layer's output shape per image, e.g. ``(C_l, H_l, W_l)``."""
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}.")
    if positions_per_image < 1:
        raise ValueError(f"positions_per_image must be >= 1, got {positions_per_image!r}.")
    x = _images(images)
    modules = check_layers(model, layers)
    store: dict[str, list[Tensor]] = {name: [] for name in modules}
    reducers = {name: _reducer(reduce, positions_per_image, seed) for name in modules}

    def hook_for(name: str):
        def hook(_module, _inputs, out):
            if not isinstance(out, Tensor):
                raise ValueError(f"layer {name!r} returns {type(out).__name__}, not a tensor; pick another.")
            if shapes is not None:
                shapes[name] = tuple(out.shape[1:])
            store[name].append(reducers[name](out.detach()).float().cpu())

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in modules.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            starts = range(0, x.shape[0], batch_size)
            for i in tqdm(starts, desc="layer features", disable=not progress, leave=False):
                model(x[i : i + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in store.items()}
