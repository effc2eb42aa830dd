"""On-disk store of extracted layers, for layers larger than memory.

Layout of a store directory::

    <stem>.npy            (N, D) float32 points (after the layer's transform)
    <stem>.index.npy      (N, 3) int64 (image, y, x)
    <stem>.transform.npz  the FeatureTransform's tensors (only when there is one)
    <stem>.json           name, geometry, num_images, transform summary, meta
    manifest.json         layer name -> stem, image names; written last, so a store without it is
                          incomplete (an interrupted extraction)

``<stem>`` is the layer name made safe for file names. Arrays are written row block by row block
through short-lived memory maps (each block is mapped, written, flushed and unmapped), so the
writer's resident memory stays one block whatever the layer's size. JSON files are written to a
temporary name and renamed (atomic on POSIX).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap

from .types import FeatureTransform, LayerActivations, LayerGeometry

__all__ = ["MANIFEST", "RowWriter", "load_store", "read_rows", "safe_stems"]

MANIFEST = "manifest.json"
_TRANSFORM_FIELDS = ("mean", "scale", "pca_mean", "components", "explained_variance_ratio")


def safe_stems(names: list[str]) -> dict[str, str]:
    """A distinct file-name stem per layer name: characters outside ``[A-Za-z0-9_-]`` (dots
    included, which would clash with the ``.index``/``.transform`` suffixes) become ``_``, e.g.
    ``"layer1.0.relu"`` -> ``"layer1_0_relu"``; a stem already taken gets ``-2``, ``-3``, ..."""
    stems: dict[str, str] = {}
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "layer"
        base, k = stem, 1
        while stem in stems.values() or stem.lower() == Path(MANIFEST).stem:
            k += 1
            stem = f"{base}-{k}"
        stems[name] = stem
    return stems


class RowWriter:
    """Writes an ``(N, D)`` ``.npy`` file one row block at a time (blocks in order)."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype):
        self.path, self.shape, self.dtype = Path(path), shape, np.dtype(dtype)
        header = open_memmap(self.path, mode="w+", dtype=self.dtype, shape=shape)
        self.offset = header.offset  # bytes before the first row
        del header
        self.row = 0

    def write(self, rows: np.ndarray) -> None:
        n = rows.shape[0]
        if self.row + n > self.shape[0]:
            raise ValueError(
                f"{self.path.name}: writing rows {self.row}..{self.row + n} past {self.shape[0]}."
            )
        if n == 0:
            return
        offset = self.offset + self.row * self.shape[1] * self.dtype.itemsize
        block = np.memmap(self.path, dtype=self.dtype, mode="r+", offset=offset, shape=(n, self.shape[1]))
        block[:] = rows
        block.flush()
        del block  # unmapped: written pages leave this process's resident set
        self.row += n

    def close(self) -> None:
        if self.row != self.shape[0]:
            raise RuntimeError(f"{self.path.name}: wrote {self.row} of {self.shape[0]} rows.")


def read_rows(path: Path, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of an ``(N, D)`` ``.npy`` file, read with ``read()`` (no lasting map)."""
    head = np.load(path, mmap_mode="r")
    dtype, D, offset = head.dtype, head.shape[1], head.offset
    del head
    with open(path, "rb") as f:
        f.seek(offset + start * D * dtype.itemsize)
        data = np.fromfile(f, dtype=dtype, count=(stop - start) * D)
    return data.reshape(stop - start, D)


def save_transform(path: Path, transform: FeatureTransform) -> None:
    arrays = {
        k: getattr(transform, k).numpy() for k in _TRANSFORM_FIELDS if getattr(transform, k) is not None
    }
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    np.savez(tmp, channels=np.int64(transform.channels), **arrays)
    os.replace(tmp, path)


def _load_transform(path: Path) -> FeatureTransform:
    with np.load(path) as z:
        values = {k: torch.from_numpy(z[k].copy()) for k in _TRANSFORM_FIELDS if k in z.files}
        return FeatureTransform(channels=int(z["channels"]), **values)


def layer_record(acts: LayerActivations, stem: str) -> dict:
    """The JSON description of a stored layer."""
    t = acts.transform
    return {
        "name": acts.name,
        "stem": stem,
        "shape": [acts.num_points, acts.num_features],
        "num_images": acts.num_images,
        "geometry": asdict(acts.geometry),
        "transform": None
        if t is None
        else {"channels": t.channels, "out_features": t.out_features, "file": f"{stem}.transform.npz"},
        "meta": acts.meta,
    }


def load_store(directory: str | Path) -> dict[str, LayerActivations]:
    """Reopen a store written by ``extract(..., store=directory)``: ``{layer: LayerActivations}``
    with ``points`` a read-only memory map and ``index`` a lazily paged (copy-on-write) map."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        hint = (
            "it holds files but no manifest: the extraction was interrupted"
            if directory.is_dir()
            else "no such directory"
        )
        raise FileNotFoundError(
            f"{str(manifest_path)!r} not found ({hint}); pass the store= directory of a finished extract()."
        )
    manifest = json.loads(manifest_path.read_text())
    out = {}
    for name, stem in manifest["layers"].items():
        rec = json.loads((directory / f"{stem}.json").read_text())
        g = rec["geometry"]
        geometry = LayerGeometry(**{k: tuple(v) for k, v in g.items()})
        index = torch.from_numpy(np.load(directory / f"{stem}.index.npy", mmap_mode="c"))
        transform = (
            None if rec["transform"] is None else _load_transform(directory / rec["transform"]["file"])
        )
        out[name] = LayerActivations(
            name=name,
            points=np.load(directory / f"{stem}.npy", mmap_mode="r"),
            index=index,
            geometry=geometry,
            num_images=rec["num_images"],
            transform=transform,
            image_names=list(manifest["image_names"]),
            meta=rec["meta"],
        )
    return out
