"""The files of an analysis run, written and read in one place so that notebooks and other tools
see exactly what the job wrote.

A run directory holds ``metrics.json``, ``summary.md``, ``images.npz`` (the analysed images, uint8,
with masks when known), ``maps/<layer>.npz`` (each layer's maps at map resolution with its
geometry), ``posterior/<layer>.nc`` (ArviZ InferenceData), ``fits/<layer>.pt`` (the fitted layer,
for :meth:`RunOutputs.apply`) and ``figures/*.png``, and, written
last, ``run_complete.json``: the run's config, overrides and a manifest of every file (size and
SHA-256). :class:`RunOutputs` opens only a directory whose files agree with its manifest, so a run
that was interrupted, or is being replaced, is never read as finished.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..activations.types import LayerGeometry
from ..data.images import ImageSet
from ..io import MANIFEST, atomic_path, manifest_error, manifest_problems
from ..maps import MAPS, LayerMaps
from .kinds import require_run

__all__ = [
    "RunOutputs",
    "latest_run",
    "layer_file",
    "load_layer_maps",
    "save_concept_maps",
    "save_images",
    "save_layer_maps",
]

_REPORTS = ("report.html", "control/report.html")  # rebuilt in place by `experiments.report`
CONCEPT_DIR = "maps/concepts"  # the concept-level maps of each layer, beside the component maps

_CLUSTER_FIELDS = ("weights", "active")  # per cluster, saved after the maps (one array per MAPS kind)


def layer_file(layer: str) -> str:
    """A file-name stem for a layer node name (``features.0`` -> ``features.0``, ``a/b`` -> ``a_b``)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", layer)


def _save_npz(path: Path, **arrays) -> None:
    with atomic_path(path, suffix=".npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)


def save_layer_maps(
    run_dir: str | Path, maps: LayerMaps, folder: str = "maps", drop_nan: bool = False
) -> Path:
    """``<run_dir>/<folder>/<layer>.npz``: every map kind ``(I, H_l, W_l)`` with the layer's
    geometry, cluster weights and flags; with ``drop_nan``, kinds that are ``NaN`` everywhere (the
    epistemic split at the concept level) are left out."""
    path = Path(run_dir) / folder / f"{layer_file(maps.name)}.npz"
    kinds = [k for k in MAPS if k in maps.values] + [k for k in maps.values if k not in MAPS]
    if drop_nan:
        kinds = [
            k for k in kinds if not (maps.values[k].is_floating_point() and maps.values[k].isnan().all())
        ]
    arrays = {k: maps.values[k].cpu().numpy() for k in kinds}
    arrays |= {k: getattr(maps, k).cpu().numpy() for k in _CLUSTER_FIELDS}
    meta = {
        "name": maps.name,
        "geometry": asdict(maps.geometry),
        "image_names": maps.image_names,
        "meta": maps.meta,
    }
    _save_npz(path, meta=np.array(json.dumps(meta, default=str)), **arrays)
    return path


def save_concept_maps(run_dir: str | Path, concept_maps: LayerMaps) -> Path:
    """A layer's concept-level maps (:func:`dpmodels.concepts.concept_layer_maps`) in
    ``maps/concepts/<layer>.npz`` (read back with ``RunOutputs.concept_maps``)."""
    return save_layer_maps(run_dir, concept_maps, CONCEPT_DIR, drop_nan=True)


def load_layer_maps(path: str | Path) -> LayerMaps:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        values = {k: torch.from_numpy(z[k]) for k in z.files if k != "meta" and k not in _CLUSTER_FIELDS}
        clusters = {k: torch.from_numpy(z[k]) for k in _CLUSTER_FIELDS}
    geometry = LayerGeometry(**{k: tuple(v) for k, v in meta["geometry"].items()})
    return LayerMaps(
        meta["name"], geometry, values, **clusters, image_names=meta["image_names"], meta=meta["meta"]
    )


def save_images(run_dir: str | Path, images: ImageSet) -> Path:
    path = Path(run_dir) / "images.npz"
    pixels = (images.images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    extra = {} if images.masks is None else {"masks": images.masks.numpy()}
    meta = {"name": images.name, "names": images.names, "mask_names": images.mask_names}
    _save_npz(path, images=pixels, meta=np.array(json.dumps(meta)), **extra)
    return path


class RunOutputs:
    """Read access to one finished analysis run directory.

    Refuses (:func:`~dpmodels.analysis.kinds.require_run`) another kind of run, a sweep directory
    and (``FileNotFoundError``) a directory without the manifest ``run_complete.json`` (an
    unfinished, interrupted or half-replaced run, with the command that finishes it), and (``ValueError``) one whose files disagree
    with it (missing files, other sizes, or a ``metrics.json`` of another run). ``config``,
    ``overrides`` and ``config_hash`` are the run's own record, not Hydra's ``.hydra/`` files."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        require_run(self.run_dir, "analyze", "RunOutputs")  # one clear refusal for anything else
        record = json.loads((self.run_dir / MANIFEST).read_text())
        problems = manifest_problems(self.run_dir, record["files"])
        if not problems and "metrics.json" in record["files"]:
            problems = manifest_problems(
                self.run_dir, {"metrics.json": record["files"]["metrics.json"]}, full=True
            )
        if problems and all(p.split(" ")[0] in _REPORTS for p in problems):
            raise ValueError(
                f"{self.run_dir}: {'; '.join(problems)}, the rest agrees with {MANIFEST} (the report was "
                f"changed or its rebuild interrupted); run `python -m experiments.report run={self.run_dir}`."
            )
        if problems:
            raise manifest_error(self.run_dir, problems)
        self.record = record
        self.metrics = json.loads((self.run_dir / "metrics.json").read_text())

    @classmethod
    def staged(cls, run_dir: str | Path, record: dict | None = None) -> RunOutputs:
        """Read a run directory the job is still writing (its ``.staging/``, no manifest yet) or a
        subfolder of a checked run (``control/``): the same reads, without the manifest check.
        For the job's own report; anything else opens runs with ``RunOutputs(run_dir)``."""
        self = cls.__new__(cls)
        self.run_dir = Path(run_dir)
        self.record = dict(record or {"files": {}})
        self.metrics = json.loads((self.run_dir / "metrics.json").read_text())
        return self

    @property
    def config(self) -> dict:
        """The run's resolved configuration, as the run recorded it."""
        return self.record.get("config", {})

    @property
    def overrides(self) -> list[str]:
        """The command-line overrides of the run."""
        return list(self.record.get("overrides", []))

    @property
    def config_hash(self) -> str | None:
        return self.record.get("config_hash")

    def verify(self) -> None:
        """Check every file's SHA-256 against the manifest (``ValueError`` naming the differences)."""
        problems = manifest_problems(self.run_dir, self.record["files"], full=True)
        if problems:
            raise ValueError(f"{self.run_dir}: {'; '.join(problems[:10])}.")

    @property
    def layers(self) -> list[str]:
        return list(self.metrics["layers"])

    def table(self) -> pd.DataFrame:
        """One row per layer, one column per metric."""
        return pd.DataFrame.from_dict(self.metrics["layers"], orient="index").rename_axis("layer")

    def maps(self, layer: str) -> LayerMaps:
        self._check(layer)
        return load_layer_maps(self.run_dir / "maps" / f"{layer_file(layer)}.npz")

    def concept_maps(self, layer: str) -> LayerMaps | None:
        """The layer's maps at the concept level (``meta["component_to_concept"]``), or ``None``
        for a run without concepts."""
        self._check(layer)
        path = self.run_dir / CONCEPT_DIR / f"{layer_file(layer)}.npz"
        return load_layer_maps(path) if path.is_file() else None

    def images(self) -> ImageSet:
        with np.load(self.run_dir / "images.npz", allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            masks = torch.from_numpy(z["masks"]) if "masks" in z.files else None
            pixels = torch.from_numpy(z["images"]).float() / 255.0
        return ImageSet(pixels, masks, None, meta["names"], meta["mask_names"], None, meta["name"])

    def posterior_path(self, layer: str) -> Path:
        self._check(layer)
        return self.run_dir / "posterior" / f"{layer_file(layer)}.nc"

    def fit(self, layer: str):
        """The layer's fitted posterior, transform and reference mean (``fits/<layer>.pt``, a
        :class:`~dpmodels.analysis.fitfile.LayerFitFile`)."""
        from .fitfile import load_fit

        self._check(layer)
        return load_fit(self.run_dir / "fits" / f"{layer_file(layer)}.pt")

    def apply(self, images, **kwargs):
        """Map new ``images`` (``ImageSet``, ``(I, C, H, W)`` tensor in ``[0, 1]`` or a list of
        ``(C, H, W)``) with this run's network, transforms and fitted posteriors, without refitting:
        an :class:`~dpmodels.analysis.apply.AppliedRun` (maps, per-layer shift, per-image table).
        Keywords: those of :func:`~dpmodels.analysis.apply.apply_run` (``model``, ``device``,
        ``out_dir``, ``cache_dir``, ...)."""
        from .apply import apply_run

        return apply_run(self, images, **kwargs)

    def _check(self, layer: str) -> None:
        if layer not in self.metrics["layers"]:
            raise ValueError(
                f"layer {layer!r} was not analysed in {self.run_dir}; the run has {self.layers}."
            )


def latest_run(root: str | Path = "outputs/analyze") -> Path:
    """The newest finished run directory under ``root`` (one holding ``metrics.json`` and its
    manifest); a relative ``root`` is looked up from the working directory and its parents (so
    notebooks find the project's runs)."""
    root = Path(root)
    bases = [root] if root.is_absolute() else [d / root for d in (Path.cwd(), *Path.cwd().parents)]
    runs = []
    for base in bases:
        runs = sorted(
            (p for p in base.glob(f"*/{MANIFEST}") if (p.parent / "metrics.json").is_file()),
            key=lambda p: p.stat().st_mtime,
        )
        if runs:
            break
    if not runs:
        raise FileNotFoundError(
            f"no finished analysis run under {root}; run `python -m experiments.analyze`."
        )
    return runs[-1].parent
