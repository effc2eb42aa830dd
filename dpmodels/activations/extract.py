"""Extraction: batched forward passes of any model, each chosen layer's ``(I, C, H_l, W_l)`` output
turned into position vectors ``(N, C)`` with their ``(image, y, x)`` index, optionally subsampled,
standardised and PCA-projected, in memory or streamed to an on-disk store.

Memory with ``store=``: points are written block by block as batches arrive. Without a transform
they go straight to ``<stem>.npy``. With ``standardize``/``pca_dim`` the first pass writes the raw
points to ``<stem>.raw.npy`` while accumulating the moments (``C x C``) the transform is fitted from;
a second pass reads the raw file block by block, transforms and writes ``<stem>.npy``, and the raw
file is deleted. Resident memory is one batch of forward passes plus one block, whatever ``I``
(the disk briefly holds raw and transformed points).
"""

from __future__ import annotations

import copy
import logging
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._validation import check_device, check_positive_int
from ..data.images import ImageSet
from ..distributed import resolve_group
from ..io import atomic_write_json
from ..nets.preprocessing import model_preprocessing
from ._graph import Tap, first_conv_channels, layer_names, model_device, preserve_mode
from .layers import conv_layers, list_layers
from .smooth import check_smooth, smooth_geometry, smooth_maps
from .store import MANIFEST, RowWriter, layer_record, safe_stems, save_transform
from .transform import Moments, apply_blocks, check_transforms, fit_transform, transform_file
from .types import FeatureTransform, LayerActivations

__all__ = ["as_images", "extract"]

log = logging.getLogger("dpmodels.activations")


def as_images(images) -> tuple[Tensor, list[str]]:
    """``(x (I, C, H, W) float32, names)`` from an ``ImageSet``, a tensor or a list of ``(C, H, W)``."""
    if isinstance(images, ImageSet):
        return images.images, list(images.names)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("images is an empty list; pass at least one (C, H, W) image.")
        items = [torch.as_tensor(im) for im in images]
        shapes = sorted({tuple(t.shape) for t in items})
        if any(len(s) != 3 for s in shapes) or len(shapes) > 1:
            raise ValueError(
                f"all images in a list must share one (C, H, W) shape, got {shapes}; resize/crop them to one "
                "size and channel count first (ImageSet.with_channels converts 1 <-> 3 channels)."
            )
        images = torch.stack(items)
    x = torch.as_tensor(images)
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(
            f"images must be an ImageSet or a tensor (I, C, H, W) with I >= 1, got {tuple(x.shape)}."
        )
    if not x.is_floating_point():
        raise ValueError(
            f"images must be floating point (e.g. in [0, 1]), got dtype {x.dtype}; use x.float() / 255."
        )
    return x.float(), [f"image-{i}" for i in range(x.shape[0])]


class _Sampler:
    """Seeded per-layer choice of ``k`` of ``HW`` positions per image; the same for a given seed and
    layer whatever the batch size (one uniform row per image from one stream)."""

    def __init__(self, name: str, seed: int, HW: int, k: int):
        self.rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        self.HW, self.k = HW, k

    def skip(self, images: int) -> None:
        """Advance the stream past ``images`` images (a data-parallel rank that starts later)."""
        if self.k == self.HW:
            return
        for start in range(0, images, 256):
            self.rng.random((min(256, images - start), self.HW))

    def __call__(self, b: int) -> np.ndarray:
        if self.k == self.HW:
            return np.broadcast_to(np.arange(self.HW), (b, self.HW))
        u = self.rng.random((b, self.HW))  # (b, HW)
        return np.sort(np.argpartition(u, self.k - 1, axis=1)[:, : self.k], axis=1)  # (b, k)


def _prepare_store(directory: Path, stems: dict[str, str], overwrite: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    suffixes = (".npy", ".raw.npy", ".index.npy", ".json", ".transform.npz")
    targets = [directory / MANIFEST] + [directory / f"{s}{suf}" for s in stems.values() for suf in suffixes]
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"store {str(directory)!r} already holds {existing[0].name!r}"
            f"{f' and {len(existing) - 1} more files' if len(existing) > 1 else ''}; "
            "pass overwrite=True to replace it or choose another store directory."
        )
    for p in existing:
        p.unlink()


def extract(
    model: nn.Module,
    images: ImageSet | Tensor | Sequence[Tensor],
    layers: Sequence[str] | None = None,
    *,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    positions_per_image: int | None = None,
    standardize: bool = False,
    pca_dim: int | None = None,
    transforms: Mapping[str, FeatureTransform] | None = None,
    store: str | Path | None = None,
    overwrite: bool = False,
    seed: int = 0,
    progress: bool = True,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    smooth: int | None = None,
    distributed=False,
) -> dict[str, LayerActivations]:
    """Position vectors of ``layers`` of ``model`` for ``images``: ``{layer: LayerActivations}``.

    ``images``: an ``ImageSet``, a tensor ``(I, C, H, W)`` or a list of equal-shape ``(C, H, W)``
    in ``[0, 1]``; each batch first gets the model's own ``preprocessing`` (pretrained networks carry
    it, see :mod:`dpmodels.nets.preprocessing`) or, when given, ``normalize = (mean, std)`` per input
    channel instead (``normalize=((0,), (1,))`` for none). ``layers``: node
    names (``None``: :func:`conv_layers`). The model runs in eval mode under ``torch.no_grad()``;
    every submodule's train/eval flag is restored afterwards. ``positions_per_image``: a seeded
    random subset of that many map positions per image (all positions if ``None`` or at least
    ``H_l * W_l``). ``standardize``: per-channel zero mean, unit std over all extracted points;
    ``pca_dim``: PCA per layer on the (standardised) points to that many dimensions (``C`` if
    ``pca_dim >= C``). ``transforms``: apply these fitted transforms (e.g. a source data set's
    ``acts[layer].transform``) instead of fitting new ones. ``store``: a directory to stream points
    to (see :mod:`dpmodels.activations.store`); ``overwrite`` allows replacing an existing store.
    ``smooth``: odd side of a window of map positions; each layer's ``(C, H_l, W_l)`` map is
    replaced by its local mean over that window before positions are taken (texture energy, see
    :mod:`dpmodels.activations.smooth`; the geometry's receptive field grows by
    ``(smooth - 1) * stride``); ``None`` for the raw activations.

    ``distributed``: ``"auto"`` or ``True`` inside a ``torch.distributed`` process group (or a
    :class:`~dpmodels.distributed.DataParallel`) extracts this rank's contiguous share of the images
    (rank 0 the first): the result is this rank's shard, its ``index`` holding the images' global
    numbers, its positions the ones a single process would take from those images, and a fitted
    transform is fitted on the moments of all ranks' points (the same on every rank). With
    ``store``, each rank writes its shard to ``store/rank<r>`` (the usual store format, the manifest
    naming the shard). ``False`` (the default): all images, this process alone.
    """
    x, names = as_images(images)
    I, C, H, W = x.shape
    group = resolve_group(distributed, device)
    lo, hi = 0, I
    if group is not None:  # this rank's contiguous share of the images
        lo, hi = group.rank * I // group.world_size, (group.rank + 1) * I // group.world_size
        error = None
        if I < group.world_size:
            error = ValueError(
                f"{I} image(s) cannot be shared by {group.world_size} ranks; use at least one image per rank "
                "or launch fewer processes."
            )
        group.check(
            error, "extract", images=I, shape=[C, H, W], layers=None if layers is None else list(layers)
        )
        x = x[lo:hi]
    batch_size = check_positive_int(batch_size, "batch_size", "e.g. batch_size=64")
    dev = check_device(device)
    smooth = check_smooth(smooth)
    if positions_per_image is not None:
        positions_per_image = check_positive_int(
            positions_per_image, "positions_per_image", "or None for all"
        )
    if pca_dim is not None:
        pca_dim = check_positive_int(pca_dim, "pca_dim", "or None for no PCA")
    if transforms is not None and (standardize or pca_dim is not None):
        raise ValueError(
            "pass either transforms= (apply fitted ones) or standardize/pca_dim (fit new ones), not both."
        )
    expected = first_conv_channels(model)
    if expected is not None and expected != C:
        raise ValueError(
            f"{type(model).__name__}'s first Conv2d takes {expected} input channels, the images have {C}; "
            f"convert them (ImageSet.with_channels({expected})) or use a model built for {C} channels."
        )
    preprocessing = model_preprocessing(model)
    if normalize is None and preprocessing is not None:
        if preprocessing.channels != C:
            raise ValueError(
                f"{type(model).__name__} expects {preprocessing.channels}-channel {preprocessing.colour} images "
                f"({preprocessing.source}), the images have {C}; convert them (ImageSet.with_channels("
                f"{preprocessing.channels}))."
            )
        normalize = (preprocessing.mean, preprocessing.std)
    if normalize is not None:
        mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in normalize)
        if mean.numel() not in (1, C) or std.numel() not in (1, C) or bool((std <= 0).any()):
            raise ValueError(
                f"normalize must be (mean, std) with 1 or {C} values each and std > 0, got {normalize}."
            )
        x_norm = (mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1))
    if model_device(model) not in (None, dev):
        log.info(
            "model is on %s, extraction on %s: using a copy of the model on %s.",
            model_device(model),
            dev,
            dev,
        )
        model = copy.deepcopy(model).to(dev)
    if layers is None:
        layers = list(transforms) if transforms is not None else conv_layers(model, (C, H, W), dev)
    infos = {i.name: i for i in list_layers(model, (C, H, W), dev, layers=layers, seed=seed)}
    layers = list(infos)
    if transforms is not None:
        transforms = check_transforms(transforms, layers, {n: i.shape[0] for n, i in infos.items()})
    fitting = standardize or pca_dim is not None
    stems = safe_stems(layers)
    directory = None if store is None else Path(store)
    if directory is not None and group is not None:
        directory = directory / f"rank{group.rank}"
    if directory is not None:
        _prepare_store(directory, stems, overwrite)

    samplers, sinks, moments = {}, {}, {}
    for n, info in infos.items():
        Cl, Hl, Wl = info.shape
        k = Hl * Wl if positions_per_image is None else min(positions_per_image, Hl * Wl)
        samplers[n] = _Sampler(n, seed, Hl * Wl, k)
        samplers[n].skip(lo)
        N = (hi - lo) * k
        D = transforms[n].out_features if transforms is not None else Cl
        if directory is None:
            sinks[n] = (torch.empty(N, D), torch.empty(N, 3, dtype=torch.long), [0])
        else:
            raw = directory / f"{stems[n]}{'.raw' if fitting else ''}.npy"
            sinks[n] = (
                RowWriter(raw, (N, Cl if fitting else D), np.float32),
                RowWriter(directory / f"{stems[n]}.index.npy", (N, 3), np.int64),
                None,
            )
        moments[n] = Moments(Cl)

    _, mode = layer_names(model)
    with preserve_mode(model):
        model.eval()
        tap = Tap(model, layers, mode, layouts={n: info.layout for n, info in infos.items()})
        bar = tqdm(total=hi - lo, desc="extract", unit="img", disable=not progress)
        with torch.no_grad():
            for i0 in range(0, hi - lo, batch_size):
                xb = x[i0 : i0 + batch_size].to(dev)  # (b, C, H, W)
                if normalize is not None:
                    xb = (xb - x_norm[0].to(dev)) / x_norm[1].to(dev)
                outs = tap(xb)
                b = xb.shape[0]
                for n, o in outs.items():
                    if smooth is not None:
                        o = smooth_maps(o, smooth)  # local mean per channel  (b, C, H_l, W_l)
                    Cl, Hl, Wl = o.shape[1:]
                    flat = o.float().permute(0, 2, 3, 1).reshape(b, Hl * Wl, Cl).cpu()  # (b, H_l W_l, C)
                    sel = torch.from_numpy(np.array(samplers[n](b), dtype=np.int64))  # writable copy  (b, k)
                    pts = torch.gather(flat, 1, sel[..., None].expand(-1, -1, Cl)).reshape(-1, Cl)  # (b k, C)
                    img = torch.arange(lo + i0, lo + i0 + b).repeat_interleave(sel.shape[1])  # (b k,)
                    idx = torch.stack([img, (sel // Wl).reshape(-1), (sel % Wl).reshape(-1)], 1)  # (b k, 3)
                    if fitting:
                        moments[n].update(pts)
                    elif transforms is not None:
                        pts = transforms[n].apply(pts)
                    points, index, cursor = sinks[n]
                    if cursor is None:
                        points.write(pts.numpy())
                        index.write(idx.numpy())
                    else:
                        points[cursor[0] : cursor[0] + len(pts)] = pts
                        index[cursor[0] : cursor[0] + len(pts)] = idx
                        cursor[0] += len(pts)
                bar.update(b)
        bar.close()

    result = {}
    for n, info in infos.items():
        notes: dict = {}
        transform = None if transforms is None else transforms[n]
        if fitting:
            merged = moments[n] if group is None else moments[n].merged(group)
            transform, notes = fit_transform(merged, standardize, pca_dim, n)
        points, index, cursor = sinks[n]
        if cursor is None:
            points.close()
            index.close()
            if fitting:
                transform_file(points.path, directory / f"{stems[n]}.npy", transform, progress)
            points = np.load(directory / f"{stems[n]}.npy", mmap_mode="r")
            index = torch.from_numpy(np.load(directory / f"{stems[n]}.index.npy", mmap_mode="c"))
        elif fitting:
            points = apply_blocks(points, transform)
        meta = {
            "layer_type": info.module_type, "channels": info.shape[0], "positions_per_image": positions_per_image,
            "seed": seed, "standardize": standardize, "pca_dim": pca_dim, "transfer": transforms is not None,
            "model": type(model).__name__, "tap": mode, "store": None if directory is None else str(directory),
            "smooth": smooth, "unsmoothed_receptive_field": list(info.geometry.receptive_field),
            "layout": info.layout.kind, "normalize": None if normalize is None else [list(map(float, v)) for v in normalize],
            **({} if group is None else {"shard": {"rank": group.rank, "world_size": group.world_size, "images": [lo, hi]}}),
            **notes,
        }  # fmt: skip
        geometry = smooth_geometry(info.geometry, smooth)
        acts = LayerActivations(n, points, index, geometry, I, transform, list(names), meta)
        if directory is not None:
            if transform is not None:
                save_transform(directory / f"{stems[n]}.transform.npz", transform)
            atomic_write_json(directory / f"{stems[n]}.json", layer_record(acts, stems[n]))
        result[n] = acts
    if directory is not None:
        shard = (
            {}
            if group is None
            else {"shard": {"rank": group.rank, "world_size": group.world_size, "images": [lo, hi]}}
        )
        atomic_write_json(
            directory / MANIFEST, {"layers": stems, "image_names": list(names), "num_images": I, **shard}
        )
    return result
