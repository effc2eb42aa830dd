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
from dataclasses import dataclass
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
from .budget import check_extraction_memory
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
    settings = dict(
        batch_size=batch_size, device=device, positions_per_image=positions_per_image, standardize=standardize,
        pca_dim=pca_dim, transforms=transforms, store=store, overwrite=overwrite, seed=seed, progress=progress,
        normalize=normalize, smooth=smooth, distributed=distributed,
    )  # fmt: skip
    plan = _plan(model, images, layers, **settings)
    sinks = {n: _LayerSink(plan, n, info) for n, info in plan.infos.items()}
    _forward_passes(plan, sinks)
    result = {n: sink.finish(plan) for n, sink in sinks.items()}
    if plan.directory is not None:
        atomic_write_json(
            plan.directory / MANIFEST,
            {
                "layers": plan.stems,
                "image_names": list(plan.names),
                "num_images": plan.num_images,
                **plan.shard_note,
            },
        )
    return result


@dataclass
class _Plan:
    """The checked settings of one :func:`extract` call: this rank's images ``x`` (global numbers
    ``lo..hi``), the model on ``device``, the layers' geometry (``infos``), the normalisation, the
    transforms to fit or apply, and where the points go (memory or ``directory``)."""

    model: nn.Module
    x: Tensor
    names: list[str]
    num_images: int
    lo: int
    hi: int
    group: object
    device: torch.device
    batch_size: int
    positions_per_image: int | None
    standardize: bool
    pca_dim: int | None
    transforms: dict | None
    seed: int
    progress: bool
    normalize: tuple | None
    smooth: int | None
    infos: dict
    mode: str
    stems: dict[str, str]
    directory: Path | None

    @property
    def fitting(self) -> bool:
        return self.standardize or self.pca_dim is not None

    @property
    def shard_note(self) -> dict:
        if self.group is None:
            return {}
        return {
            "shard": {
                "rank": self.group.rank,
                "world_size": self.group.world_size,
                "images": [self.lo, self.hi],
            }
        }


def _plan(model, images, layers, **settings) -> _Plan:
    """Check every argument (one clear error each), take this rank's share of the images, resolve
    the layers and their geometry, and prepare the store. ``settings``: :func:`extract`'s keywords."""
    batch_size, device, seed, smooth = (
        settings["batch_size"],
        settings["device"],
        settings["seed"],
        settings["smooth"],
    )
    positions_per_image, pca_dim = settings["positions_per_image"], settings["pca_dim"]
    standardize, transforms, store = settings["standardize"], settings["transforms"], settings["store"]
    x, names = as_images(images)
    I, C, H, W = x.shape
    group = resolve_group(settings["distributed"], device)
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
    normalize = _normalization(model, settings["normalize"], C)
    check_extraction_memory(model, (C, H, W), hi - lo, batch_size, dev, in_memory_points=store is None)
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
    stems = safe_stems(layers)
    directory = None if store is None else Path(store)
    if directory is not None and group is not None:
        directory = directory / f"rank{group.rank}"
    if directory is not None:
        _prepare_store(directory, stems, settings["overwrite"])
    return _Plan(
        model, x, names, I, lo, hi, group, dev, batch_size, positions_per_image, bool(standardize), pca_dim,
        transforms, seed, settings["progress"], normalize, smooth, infos, layer_names(model)[1], stems, directory,
    )  # fmt: skip


def _normalization(model: nn.Module, normalize, channels: int) -> tuple | None:
    """``(mean, std)`` per input channel: ``normalize`` when given, else the model's own
    preprocessing (pretrained networks), else ``None``; checked against the images' channels."""
    preprocessing = model_preprocessing(model)
    if normalize is None and preprocessing is not None:
        if preprocessing.channels != channels:
            raise ValueError(
                f"{type(model).__name__} expects {preprocessing.channels}-channel {preprocessing.colour} images "
                f"({preprocessing.source}), the images have {channels}; convert them (ImageSet.with_channels("
                f"{preprocessing.channels}))."
            )
        normalize = (preprocessing.mean, preprocessing.std)
    if normalize is not None:
        mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(-1) for v in normalize)
        if mean.numel() not in (1, channels) or std.numel() not in (1, channels) or bool((std <= 0).any()):
            raise ValueError(
                f"normalize must be (mean, std) with 1 or {channels} values each and std > 0, got {normalize}."
            )
    return normalize


class _LayerSink:
    """Where one layer's positions go while the batches arrive (memory, or the store's files), with
    the seeded position sampler and the moments a fitted transform needs."""

    def __init__(self, plan: _Plan, name: str, info):
        Cl, Hl, Wl = info.shape
        k = Hl * Wl if plan.positions_per_image is None else min(plan.positions_per_image, Hl * Wl)
        self.name, self.info = name, info
        self.sampler = _Sampler(name, plan.seed, Hl * Wl, k)
        self.sampler.skip(plan.lo)
        N = (plan.hi - plan.lo) * k
        D = plan.transforms[name].out_features if plan.transforms is not None else Cl
        self.cursor: int | None = 0
        if plan.directory is None:
            self.points, self.index = torch.empty(N, D), torch.empty(N, 3, dtype=torch.long)
        else:
            stem = plan.stems[name]
            raw = plan.directory / f"{stem}{'.raw' if plan.fitting else ''}.npy"
            self.points = RowWriter(raw, (N, Cl if plan.fitting else D), np.float32)
            self.index = RowWriter(plan.directory / f"{stem}.index.npy", (N, 3), np.int64)
            self.cursor = None
        self.moments = Moments(Cl)

    def add(self, plan: _Plan, o: Tensor, first_image: int) -> None:
        """One batch's map ``o (b, C, H_l, W_l)`` of images ``first_image ...`` (global numbers)."""
        if plan.smooth is not None:
            o = smooth_maps(o, plan.smooth)  # local mean per channel  (b, C, H_l, W_l)
        b, Cl, Hl, Wl = o.shape
        flat = o.float().permute(0, 2, 3, 1).reshape(b, Hl * Wl, Cl).cpu()  # (b, H_l W_l, C)
        sel = torch.from_numpy(np.array(self.sampler(b), dtype=np.int64))  # writable copy  (b, k)
        pts = torch.gather(flat, 1, sel[..., None].expand(-1, -1, Cl)).reshape(-1, Cl)  # (b k, C)
        img = torch.arange(first_image, first_image + b).repeat_interleave(sel.shape[1])  # (b k,)
        idx = torch.stack([img, (sel // Wl).reshape(-1), (sel % Wl).reshape(-1)], 1)  # (b k, 3)
        if plan.fitting:
            self.moments.update(pts)
        elif plan.transforms is not None:
            pts = plan.transforms[self.name].apply(pts)
        if self.cursor is None:
            self.points.write(pts.numpy())
            self.index.write(idx.numpy())
        else:
            self.points[self.cursor : self.cursor + len(pts)] = pts
            self.index[self.cursor : self.cursor + len(pts)] = idx
            self.cursor += len(pts)

    def finish(self, plan: _Plan) -> LayerActivations:
        """Fit (on all ranks' moments) or take the transform, apply it, and describe the layer."""
        n, info, directory = self.name, self.info, plan.directory
        notes: dict = {}
        transform = None if plan.transforms is None else plan.transforms[n]
        if plan.fitting:
            merged = self.moments if plan.group is None else self.moments.merged(plan.group)
            transform, notes = fit_transform(merged, plan.standardize, plan.pca_dim, n)
        points, index = self.points, self.index
        if self.cursor is None:
            points.close()
            index.close()
            if plan.fitting:
                transform_file(points.path, directory / f"{plan.stems[n]}.npy", transform, plan.progress)
            points = np.load(directory / f"{plan.stems[n]}.npy", mmap_mode="r")
            index = torch.from_numpy(np.load(directory / f"{plan.stems[n]}.index.npy", mmap_mode="c"))
        elif plan.fitting:
            points = apply_blocks(points, transform)
        normalize = plan.normalize
        meta = {
            "layer_type": info.module_type, "channels": info.shape[0], "positions_per_image": plan.positions_per_image,
            "seed": plan.seed, "standardize": plan.standardize, "pca_dim": plan.pca_dim,
            "transfer": plan.transforms is not None, "model": type(plan.model).__name__, "tap": plan.mode,
            "store": None if directory is None else str(directory), "smooth": plan.smooth,
            "unsmoothed_receptive_field": list(info.geometry.receptive_field), "layout": info.layout.kind,
            "normalize": None if normalize is None else [list(map(float, v)) for v in normalize],
            **plan.shard_note, **notes,
        }  # fmt: skip
        geometry = smooth_geometry(info.geometry, plan.smooth)
        acts = LayerActivations(
            n, points, index, geometry, plan.num_images, transform, list(plan.names), meta
        )
        if directory is not None:
            if transform is not None:
                save_transform(directory / f"{plan.stems[n]}.transform.npz", transform)
            atomic_write_json(directory / f"{plan.stems[n]}.json", layer_record(acts, plan.stems[n]))
        return acts


def _forward_passes(plan: _Plan, sinks: dict[str, _LayerSink]) -> None:
    """Batched forward passes of this rank's images; every tapped layer's map goes to its sink."""
    model, dev = plan.model, plan.device
    if plan.normalize is not None:
        mean, std = (
            torch.as_tensor(v, dtype=torch.float32).reshape(1, -1, 1, 1).to(dev) for v in plan.normalize
        )
    with preserve_mode(model):
        model.eval()
        tap = Tap(model, list(plan.infos), plan.mode, layouts={n: i.layout for n, i in plan.infos.items()})
        bar = tqdm(total=plan.hi - plan.lo, desc="extract", unit="img", disable=not plan.progress)
        with torch.no_grad():
            for i0 in range(0, plan.hi - plan.lo, plan.batch_size):
                xb = plan.x[i0 : i0 + plan.batch_size].to(dev)  # (b, C, H, W)
                if plan.normalize is not None:
                    xb = (xb - mean) / std
                for n, o in tap(xb).items():
                    sinks[n].add(plan, o, plan.lo + i0)
                bar.update(xb.shape[0])
        bar.close()
