"""Apply a finished run to new images: the run's network, transforms and fitted posteriors map the
new images without refitting, and each layer says how far the new images move it.

:func:`apply_run` rebuilds the run's network from the run's own config (checked against the weights
fingerprint in ``fits/<layer>.pt``), extracts the run's layers from the new images with the run's
extraction settings (positions per image, seed, smoothing), applies each layer's saved
standardisation/PCA exactly as the main job did, and computes the maps with the run's number of
posterior draws and seed; applied to the run's own images it reproduces the run's maps. The shift
of each layer against the reference run: the mean predictive log density of the new positions
beside the run's held-out value (nats per position) and the novelty share, the share of new
positions whose novelty exceeds the 95th percentile of the run's own novelty map.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from torch import nn

from ..activations import extract
from ..activations.transform import apply_blocks
from ..activations.types import LayerActivations
from ..concepts.levels import regrouped_layer_maps
from ..data.images import ImageSet
from ..io import atomic_path, atomic_write_json, atomic_write_text
from ..maps import LayerMaps, layer_maps
from .fitfile import LayerFitFile, load_fit, network_fingerprint
from .outputs import RunOutputs, layer_file, save_concept_maps, save_images, save_layer_maps

__all__ = ["NOVELTY_QUANTILE", "AppliedRun", "apply_run", "run_network"]

log = logging.getLogger(__name__)

NOVELTY_QUANTILE = 0.95  # a new position is novel when its novelty exceeds this quantile of the run's


@dataclass
class AppliedRun:
    """What :func:`apply_run` computed: ``maps`` ``{layer: LayerMaps}`` over the new images,
    ``layers`` ``{layer: {heldout_loglik, reference_heldout_loglik, loglik_drop, novelty_share,
    mean_entropy, ...}}``, ``per_image`` (one row per image and layer) and the ``images``;
    ``concept_maps`` ``{layer: LayerMaps}``: the new images at the run's concept level (for a run
    with concepts)."""

    maps: dict[str, LayerMaps]
    layers: dict[str, dict]
    per_image: pd.DataFrame
    images: ImageSet
    timings: dict = field(default_factory=dict)
    importance: pd.DataFrame | None = None  # importance.csv's table, with importance=...
    concept_maps: dict[str, LayerMaps] = field(default_factory=dict)  # under the run's concepts


def _as_image_set(images) -> ImageSet:
    if isinstance(images, ImageSet):
        return images
    from ..activations import as_images

    x, names = as_images(images)
    return ImageSet(x, names=names, name="images")


def _run_channels(run: RunOutputs) -> int:
    with np.load(run.run_dir / "images.npz", allow_pickle=False) as z:
        return int(z["images"].shape[1])


def run_network(
    run: RunOutputs, *, cache_dir: str | None = None, device: str = "cpu"
) -> tuple[nn.Module, dict]:
    """The run's network, rebuilt from the run's own config (``net`` group, its input channels; a
    trained small CNN comes from the training cache, ``cache_dir`` or the run's)."""
    from .network import obtain_network

    net = dict(run.config.get("net") or {})
    if "name" not in net:
        raise ValueError(
            f"{run.run_dir} records no network config (net.name); apply needs a run of "
            "`python -m experiments.analyze`, or pass model= from Python."
        )
    name = net.pop("name")
    cache = cache_dir if cache_dir is not None else run.config.get("cache_dir")
    return obtain_network(
        name, in_channels=_run_channels(run), cache_dir=cache, device=device, progress=False, **net
    )


def _load_fits(run: RunOutputs) -> dict[str, LayerFitFile]:
    fits = {}
    for layer in run.layers:
        if run.metrics["layers"][layer].get("coupling", 0.0) > 0:
            raise ValueError(
                f"layer {layer!r} of {run.run_dir} was fitted with spatially coupled assignments "
                "(model=spatial), whose maps need the coupled fit over whole images; apply maps only "
                "runs of the plain mixture (model=mixture)."
            )
        path = run.run_dir / "fits" / f"{layer_file(layer)}.pt"
        if not path.is_file():
            raise FileNotFoundError(
                f"{run.run_dir} has no fits/{path.name}: it was written before runs saved their fitted "
                "layers; rerun the analysis (same command, overwrite=true) to apply it to new images."
            )
        fits[layer] = load_fit(path)
    return fits


def _check_network(model: nn.Module, fits: dict[str, LayerFitFile], run: RunOutputs) -> None:
    fingerprint = network_fingerprint(model)
    expected = {f.network for f in fits.values()}
    if expected != {fingerprint}:
        net = run.config.get("net", {}).get("name", "?")
        raise ValueError(
            f"the network given differs from the one {run.run_dir} was fitted with (weights fingerprint "
            f"{fingerprint}, the run's {sorted(expected)[0]}): another architecture, width or weights; "
            f"apply a run with the network it was fitted on ({net!r} as the run's config says), or "
            "analyse this network first."
        )


def _check_images(images: ImageSet, run: RunOutputs) -> None:
    C = _run_channels(run)
    if images.channels != C:
        raise ValueError(
            f"the new images have {images.channels} channel(s), the run {run.run_dir} analysed "
            f"{C}-channel images; convert them (ImageSet.with_channels({C}), data.channels) or apply "
            "a run made on such images."
        )


def extract_applied(model: nn.Module, images: ImageSet, fits: dict[str, LayerFitFile], *,
                    device: str = "cpu", batch_size: int = 64, progress: bool = False) -> dict[str, LayerActivations]:  # fmt: skip
    """The run's layers of ``images`` in the run's coordinates: raw extraction with the run's
    settings, then each layer's saved transform applied block by block as the main job applies it."""
    first = next(iter(fits.values())).extraction
    raw = extract(
        model, images, list(fits), device=device, batch_size=batch_size, seed=first["seed"],
        positions_per_image=first["positions_per_image"], smooth=first["smooth"], progress=progress,
        normalize=None if first["normalize"] is None else tuple(first["normalize"]),
    )  # fmt: skip
    out = {}
    for name, a in raw.items():
        fit = fits[name]
        if a.num_features != fit.channels:
            raise ValueError(
                f"layer {name!r} has {a.num_features} channels in this network, the run's fit {fit.channels}: "
                "the network is not the run's (another width); apply the run with its own network."
            )
        pts = a.points if fit.transform is None else apply_blocks(a.points, fit.transform)
        meta = {**a.meta, "applied": True}
        out[name] = LayerActivations(name, pts, a.index, a.geometry, a.num_images, fit.transform,
                                     list(a.image_names), meta)  # fmt: skip
    return out


def apply_run(
    run: RunOutputs | str | Path,
    images,
    *,
    model: nn.Module | None = None,
    out_dir: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 64,
    cache_dir: str | None = None,
    figures: dict | None = None,
    importance: dict | None = None,
    progress: bool = False,
) -> AppliedRun:
    """Map ``images`` (an ``ImageSet``, ``(I, C, H, W)`` tensor in ``[0, 1]`` or a list of
    ``(C, H, W)``) with the finished ``run``'s fitted layers; with ``out_dir`` (a staging folder:
    the caller publishes it) also write ``maps/<layer>.npz`` (and ``maps/concepts/<layer>.npz``),
    ``images.npz``, ``per_image.csv``, ``metrics.json``, ``summary.md``, ``figures/`` and
    ``report.html`` (unless ``figures["report"]`` is false) there. ``model``: the run's network (default:
    rebuilt from the run's config); another network is refused. ``importance``: keywords of
    :func:`~dpmodels.analysis.importance.run_importance` (``classes``, ``sobol_masks``,
    ``max_images``): concept importance on the new images (``result.importance``, and
    ``importance.csv`` with ``out_dir``)."""
    run = run if isinstance(run, RunOutputs) else RunOutputs(run)
    if out_dir is not None and Path(out_dir).resolve() == run.run_dir.resolve():
        raise ValueError(f"apply writes into a new run directory, not into the reference run {run.run_dir}.")
    images = _as_image_set(images)
    _check_images(images, run)
    fits = _load_fits(run)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if model is None:
        model, _ = run_network(run, cache_dir=cache_dir, device=device)
    _check_network(model, fits, run)
    timings["network_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    acts = extract_applied(model, images, fits, device=device, batch_size=batch_size, progress=progress)
    timings["extract_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    maps, layers, rows, concept_maps = {}, {}, [], {}
    for name, a in acts.items():
        ref = run.maps(name)
        m = layer_maps(fits[name].posterior, a, num_draws=int(ref.meta["num_draws"]), seed=int(ref.meta["seed"]),
                       per_dimension=bool(ref.meta.get("per_dimension", False)))  # fmt: skip
        maps[name] = m
        ref_concepts = run.concept_maps(name)
        if ref_concepts is not None:  # the run's concepts, the new images' labels and entropy
            concept_maps[name] = regrouped_layer_maps(fits[name].posterior, a, ref_concepts, m)
        layers[name] = _shift(m, ref, run.metrics["layers"][name])
        rows += _per_image(m, ref, name)
    timings["maps_seconds"] = time.perf_counter() - t0
    timings["images_per_second"] = len(images) / max(
        timings["extract_seconds"] + timings["maps_seconds"], 1e-9
    )
    result = AppliedRun(maps, layers, pd.DataFrame(rows), images, timings, concept_maps=concept_maps)
    if importance is not None and importance.get("enabled", True):
        from .importance import run_importance

        t0 = time.perf_counter()
        cfg = {k: v for k, v in importance.items() if k != "enabled"}
        fig_on = bool((figures or {}).get("enabled", True)) and cfg.pop("figure", True)
        result.importance = run_importance(
            model,
            images,
            fits,
            out_dir=out_dir,
            device=device,
            figure=fig_on,
            seed=int(ref.meta["seed"]),
            **cfg,
        )
        timings["importance_seconds"] = time.perf_counter() - t0
    if out_dir is not None:
        write_applied(Path(out_dir), result, run, dict(figures or {}))
    return result


def _threshold(ref: LayerMaps) -> float:
    return float(np.nanquantile(ref.novelty.numpy().astype(np.float64), NOVELTY_QUANTILE))


def _shift(m: LayerMaps, ref: LayerMaps, ref_row: dict) -> dict:
    novelty = m.novelty.numpy().astype(np.float64)
    novelty = novelty[np.isfinite(novelty)]
    per_dim = bool(m.meta.get("per_dimension", False))
    loglik = float(-novelty.mean()) if not per_dim else float("nan")
    ref_ll = float(ref_row.get("heldout_loglik", float("nan")))
    return {
        "heldout_loglik": loglik,  # mean predictive log density of the new positions (nats per position)
        "reference_heldout_loglik": ref_ll,
        "loglik_drop": ref_ll - loglik,
        "novelty_share": float((novelty > _threshold(ref)).mean()),
        "novelty_threshold": _threshold(ref),
        "mean_novelty": float(novelty.mean()),
        "mean_entropy": float(np.nanmean(m.entropy.numpy())),
        "reference_mean_entropy": float(np.nanmean(ref.entropy.numpy())),
        "positions": int(novelty.size),
        "clusters_used": int(np.unique(m.labels.numpy()[m.labels.numpy() >= 0]).size),
    }


def _per_image(m: LayerMaps, ref: LayerMaps, name: str) -> list[dict]:
    rows = []
    threshold = _threshold(ref)
    for i in range(m.num_images):
        lab = m.labels[i].numpy()
        nov = m.novelty[i].numpy().astype(np.float64)
        ent = m.entropy[i].numpy().astype(np.float64)
        seen = lab >= 0
        counts = np.bincount(lab[seen], minlength=int(m.weights.shape[0]))
        rows.append({
            "image": m.image_names[i] if i < len(m.image_names) else str(i), "layer": name,
            "mean_entropy": float(ent[seen].mean()), "mean_novelty": float(nov[seen].mean()),
            "novelty_share": float((nov[seen] > threshold).mean()), "top_cluster": int(counts.argmax()),
            "top_cluster_share": float(counts.max() / max(seen.sum(), 1)), "clusters": int((counts > 0).sum()),
        })  # fmt: skip
    return rows


def write_applied(out_dir: Path, result: AppliedRun, run: RunOutputs, fig_cfg: dict) -> None:
    """The files of an applied run (into ``out_dir``, a staging folder)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for m in result.maps.values():
        save_layer_maps(out_dir, m)
    for m in result.concept_maps.values():
        save_concept_maps(out_dir, m)
    save_images(out_dir, result.images)
    with atomic_path(out_dir / "per_image.csv", suffix=".csv") as tmp:
        result.per_image.to_csv(tmp, index=False)
    t0 = time.perf_counter()
    report = fig_cfg.pop("report", True)
    if fig_cfg.pop("enabled", True):
        from ..viz.maps import plot_image_layers, plot_prototypes, save_figure

        dpi = fig_cfg.get("dpi", 110)
        for i in range(min(int(fig_cfg.get("num_images", 4)), len(result.images))):
            fig = plot_image_layers(result.images.images[i], list(result.maps.values()), i)
            save_figure(fig, out_dir / "figures" / f"layers_{i:02d}.png", dpi=dpi)
        for name, m in result.maps.items():
            fig = plot_prototypes(result.images.images, m, top_k=int(fig_cfg.get("prototypes", 6)))
            save_figure(fig, out_dir / "figures" / f"prototypes_{layer_file(name)}.png", dpi=dpi)
    result.timings["figure_seconds"] = time.perf_counter() - t0
    metrics = {
        "reference": {
            "run": str(run.run_dir),
            "config_hash": run.config_hash,
            "layers": {name: _reference_row(run.metrics["layers"][name]) for name in result.layers},
        },
        "layers": result.layers,
        "data": {
            "name": result.images.name,
            "num_images": len(result.images),
            "size": list(result.images.size),
        },
        "network": run.metrics.get("network", {}),
        "timings": result.timings,
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    lines = [
        f"# Applied run\n\nReference run: `{run.run_dir}`; {len(result.images)} new images "
        f"({result.images.name}).\n",
        "| layer | log-lik new (nats) | log-lik reference held-out | drop | novelty share | mean entropy |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in result.layers.items():
        lines.append(
            f"| {name} | {r['heldout_loglik']:.2f} | {r['reference_heldout_loglik']:.2f} | "
            f"{r['loglik_drop']:.2f} | {r['novelty_share']:.3f} | {r['mean_entropy']:.3f} |"
        )
    lines.append(
        f"\nNovelty share: new positions above the {NOVELTY_QUANTILE:.0%} quantile of the reference "
        "run's novelty (5 % on the run's own images)."
    )
    atomic_write_text(out_dir / "summary.md", "\n".join(lines) + "\n")
    if report:  # report.html from the files just written (as the main job), then its time recorded
        from .html_report import write_html_report

        t0 = time.perf_counter()
        write_html_report(RunOutputs.staged(out_dir), prototypes=int(fig_cfg.get("prototypes", 6)))
        result.timings["report_seconds"] = time.perf_counter() - t0
        atomic_write_json(out_dir / "metrics.json", metrics)


_REFERENCE_KEYS = ("n_active", "n_active_interval", "heldout_loglik", "mean_entropy")


def _reference_row(row: dict) -> dict:
    """What an applied run keeps of the reference run's layer row: the posterior number of clusters
    K̂ with its 90 % interval, the held-out log-likelihood and the concepts' number (for the report)."""
    out = {k: row[k] for k in _REFERENCE_KEYS if k in row}
    if "concepts" in row:
        out["concepts"] = {
            k: row["concepts"][k] for k in ("criterion", "k", "k_interval") if k in row["concepts"]
        }
    return out
