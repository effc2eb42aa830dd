"""The main analysis: a network's layers on a set of images, end to end, into a run directory.

``analyze`` extracts every chosen layer, fits one DPGMM per layer in batched calls, computes each
layer's maps, scores them against ground-truth masks when the images have them (optionally with the
baselines), saves each layer's posterior as ArviZ InferenceData, and writes the figures, the
metrics and a short report. Experiments call it; it never reads a config file.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..activations import extract
from ..data.images import ImageSet
from ..io import atomic_path, atomic_write_json
from ..maps import LayerMaps, layer_maps, n_active_draws
from .fitfile import network_fingerprint, save_fit
from .fitting import LayerFit, fit_layers, gather_layers, read_points
from .outputs import layer_file, save_concept_maps, save_images, save_layer_maps
from .report import write_figures, write_summary

__all__ = ["analyze"]

log = logging.getLogger(__name__)


def _true_k(images: ImageSet) -> int | None:
    if images.masks is None:
        return None
    m = images.masks
    return int(torch.unique(m[m >= 0]).numel())


def _layer_metrics(fit: LayerFit, maps: LayerMaps, evaluation: dict | None, k_draws: np.ndarray) -> dict:
    m = fit.model
    out = {
        "n_active": int(m.n_active_),
        "n_active_interval": [float(np.quantile(k_draws, 0.05)), float(np.quantile(k_draws, 0.95))],
        "elbo": float(m.elbo_) / len(fit.fit_index),  # the coupled bound when coupling > 0
        "heldout_loglik": fit.heldout_loglik,
        "fit_seconds": fit.fit_seconds,
        "fit_points": len(fit.fit_index),
        "coupling": float(getattr(m, "coupling", 0.0)),
        "coupled_seconds": float(m.fit_result_.info.get("coupled_seconds", 0.0)),
        "num_features": int(m.n_features_in_),
        "covariance": m.covariance,
        "rank": fitted_rank(m),  # factors per component (covariance="lowrank"), else null
        "converged": bool(m.converged_),
        "mean_entropy": float(np.nanmean(maps.entropy.numpy())),
        "mean_epistemic": float(np.nanmean(maps.epistemic.numpy())),
    }
    if evaluation is not None:
        keep = (
            "ari",
            "nmi",
            "miou",
            "matched_accuracy",
            "k_true",
            "k_error",
            "entropy_auroc",
            "ece",
            "entropy_auroc_majority",
            "ece_majority",
            "majority_accuracy",
        )
        out.update({k: evaluation[k] for k in keep if k in evaluation})
        per_image = evaluation.get("per_image", {})
        for k in ("ari", "nmi"):
            if k in per_image:
                out[f"{k}_per_image_mean"] = float(np.nanmean(per_image[k]))
    return out


def analyze(
    images: ImageSet,
    model: nn.Module,
    out_dir: str | Path,
    *,
    layers: list[str] | None = None,
    extraction: dict | None = None,
    fitting: dict | None = None,
    dpgmm: dict | None = None,
    num_draws: int = 64,
    map_draws: int = 16,
    figures: dict | None = None,
    baselines: bool = False,
    k_max: int = 12,
    concepts: dict | None = None,
    spatial: dict | None = None,
    network: dict | None = None,
    importance: dict | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = True,
    group=None,
) -> dict | None:
    """Analyse ``model``'s ``layers`` on ``images``; returns the metrics written to ``metrics.json``.

    ``extraction``: keyword arguments of :func:`dpmodels.activations.extract` (positions_per_image,
    standardize, pca_dim, batch_size; ``on_disk=True`` streams points to ``out_dir/activations``);
    ``fitting``: ``fit_points``, ``heldout_points``; ``dpgmm``: keyword arguments of
    :class:`dpmodels.DPGMM`; ``num_draws``: posterior draws for InferenceData and K̂'s interval;
    ``map_draws``: posterior draws for the epistemic/aleatoric maps (their cost is linear in it, over
    every position of every image); ``figures``: ``enabled``, ``num_images``, ``prototypes``, ``dpi``,
    ``report`` (``report.html``, :mod:`dpmodels.analysis.html_report`; default on);
    ``network``: what the model is (recorded in the metrics); ``concepts``: keyword arguments of
    :func:`dpmodels.concepts.layer.layer_concepts` (``criteria``, ``num_draws``, ``draw_points``) or
    ``{"enabled": False}``: each layer's components merged into concepts, scored at both levels;
    ``spatial``: ``{"coupling": beta, "coupled_max_iter": n}`` with ``beta > 0`` fits each layer with
    assignments coupled to their grid neighbours (:mod:`dpmodels.spatial`, on whole images) and
    draws its cluster and entropy maps from the coupled ``q(z)``. ``importance``: keywords of
    :func:`dpmodels.analysis.importance.run_importance` (``classes``, ``sobol_masks``,
    ``max_images``, ``figure``): each layer's concept importance for the network's classes, into
    ``importance.csv`` and ``figures/importance_<layer>_class<c>.png``.

    ``group`` (a :class:`~dpmodels.distributed.DataParallel`; every rank calls ``analyze`` with the
    same images and settings, and the same ``out_dir``, on a file system they share): each rank
    extracts its share of the images and the fits are data-parallel; then rank 0 gathers the
    layers' points and does the rest alone (maps, concepts, posteriors, figures, metrics) and
    returns the metrics, the other ranks return ``None``."""
    job = _Job(
        images, model, Path(out_dir), layers, dict(extraction or {}), fitting or {}, dpgmm or {}, spatial or {},
        num_draws, map_draws, baselines, k_max, seed, device, progress, group,
    )  # fmt: skip
    timings: dict[str, float] = {}
    acts, fits = _extract_and_fit(job, timings)
    if acts is None:  # a rank other than 0: its share is done
        return None
    out_dir = job.out_dir
    t0 = time.perf_counter()
    results = _LayerResults(dict(concepts or {}))
    for name, fit in fits.items():
        results.add(job, name, fit, acts)
    timings["maps_seconds"] = time.perf_counter() - t0
    timings["concepts_seconds"] = sum(
        r["concepts"]["seconds"] for r in results.rows.values() if "concepts" in r
    )
    metrics = {
        "layers": results.rows,
        "data": {
            "name": images.name,
            "num_images": len(images),
            "size": list(images.size),
            "true_k": _true_k(images),
            "has_masks": images.masks is not None,
        },
        "network": network or {"name": type(model).__name__},
        "timings": timings,
        "seed": seed,
    }
    if group is not None:
        metrics["parallel"] = {"world_size": group.world_size, "backend": group.backend}
    if importance is not None and importance.get("enabled", True):
        from .fitfile import load_fit
        from .importance import run_importance

        t0 = time.perf_counter()
        imp = {k: v for k, v in importance.items() if k != "enabled"}
        imp["figure"] = bool(imp.get("figure", True)) and bool((figures or {}).get("enabled", True))
        fits_files = {n: load_fit(out_dir / "fits" / f"{layer_file(n)}.pt") for n in fits}
        run_importance(model, images, fits_files, out_dir=out_dir, seed=seed, device=device, **imp)
        timings["importance_seconds"] = time.perf_counter() - t0
    _write_outputs(out_dir, images, metrics, results, dict(figures or {}))
    return metrics


@dataclass(frozen=True)
class _Job:
    """The arguments of one :func:`analyze` call, as its steps read them."""

    images: ImageSet
    model: nn.Module
    out_dir: Path
    layers: list[str] | None
    extraction: dict
    fitting: dict
    dpgmm: dict
    spatial: dict
    num_draws: int
    map_draws: int
    baselines: bool
    k_max: int
    seed: int
    device: str
    progress: bool
    group: object


def _extract_and_fit(job: _Job, timings: dict) -> tuple[dict | None, dict]:
    """Step 1 of :func:`analyze`: extract the layers (this rank's images) and fit them (data-parallel
    with ``job.group``); data-parallel, rank 0 then gathers every rank's points and the others get
    ``(None, fits)``."""
    extraction = dict(job.extraction)
    on_disk = extraction.pop("on_disk", False)
    seed, device, progress, group = job.seed, job.device, job.progress, job.group
    t0 = time.perf_counter()
    acts = extract(
        job.model,
        job.images,
        job.layers,
        device=device,
        seed=seed,
        progress=progress,
        store=job.out_dir / "activations" if on_disk else None,
        distributed=group or False,
        **extraction,
    )
    timings["extract_seconds"] = time.perf_counter() - t0
    log.info(
        "extracted %d layer(s) in %.1f s: %s",
        len(acts),
        timings["extract_seconds"],
        {k: (a.num_points, a.num_features) for k, a in acts.items()},
    )
    t0 = time.perf_counter()
    fits = fit_layers(
        acts,
        seed=seed,
        **job.fitting,
        device=device,
        progress=progress,
        checkpoint_dir=job.out_dir / "checkpoints",
        maps_draws=job.map_draws,
        **job.spatial,
        **job.dpgmm,
        group=group,
    )
    timings["fit_seconds"] = time.perf_counter() - t0
    if group is not None:  # rank 0 goes on with every rank's points; the others are done
        t0 = time.perf_counter()
        acts = gather_layers(acts, group)
        if acts is not None:
            timings["gather_seconds"] = time.perf_counter() - t0
    return acts, fits


class _LayerResults:
    """Step 2 of :func:`analyze`, layer by layer: maps (saved), K̂ draws, scores against the masks
    (and the baselines), concepts, and the posterior as InferenceData (saved)."""

    def __init__(self, concepts: dict):
        self.concepts_on = concepts.pop("enabled", True)
        self.concept_cfg = concepts
        self.maps, self.rows, self.k_draws, self.eval_rows = {}, {}, {}, []
        self.concept_maps, self.concept_sel = {}, {}
        self.fingerprint: str | None = None

    def add(self, job: _Job, name: str, fit: LayerFit, acts: dict) -> None:
        from ..diagnostics import save_inference_data, to_inference_data  # ArviZ only when needed

        layer, images, out_dir, seed, num_draws = acts[name], job.images, job.out_dir, job.seed, job.num_draws
        start = time.perf_counter()

        maps = layer_maps(fit.model, layer, num_draws=job.map_draws, seed=seed, progress=job.progress)
        if getattr(fit.model, "coupling", 0.0) > 0:  # cluster and entropy maps of the coupled q(z)
            from ..spatial import coupled_maps

            maps = coupled_maps(maps, fit.model, layer)
        self.maps[name] = maps
        save_layer_maps(out_dir, maps)
        if self.fingerprint is None:
            self.fingerprint = network_fingerprint(job.model)
        save_fit(out_dir, name, fit.model.posterior_, layer, self.fingerprint)  # for apply and importance
        self.k_draws[name] = n_active_draws(fit.model.posterior_, num_draws=max(num_draws, 100), seed=seed)
        evaluation = None
        if images.masks is not None:
            from ..evaluation import compare_methods, evaluate_layer

            evaluation = evaluate_layer(maps, images.masks)
            if job.baselines:
                self.eval_rows += compare_methods(
                    layer,
                    images.masks,
                    fit.model,
                    k_max=job.k_max,
                    seed=seed,
                    raw_points=_raw_points(job.model, images, name, acts, job.device, seed),
                )
        self.rows[name] = _layer_metrics(fit, maps, evaluation, self.k_draws[name])
        points = read_points(layer, fit.fit_index)
        if self.concepts_on:  # components -> concepts (dpmodels.concepts), scored like the components
            from ..concepts.layer import layer_concepts

            self.rows[name]["concepts"], self.concept_maps[name], self.concept_sel[name] = layer_concepts(
                fit.model, layer, maps, points, images.masks, seed=seed, **self.concept_cfg
            )
            save_concept_maps(out_dir, self.concept_maps[name])
        draws = posterior_draws(fit.model, num_draws, min(len(points), 5000))
        if draws < num_draws:
            log.info(
                "layer %r: %d posterior draws in posterior/%s.nc instead of %d (D=%d: more would exceed %d MiB)",
                name, draws, layer_file(name), num_draws, fit.model.n_features_in_, IDATA_BYTES // 2**20,
            )  # fmt: skip
        self.rows[name]["posterior_draws"] = draws
        idata = to_inference_data(
            fit.model, points.numpy(), num_draws=draws, seed=seed, max_points=5000, max_bytes=IDATA_BYTES
        )
        (out_dir / "posterior").mkdir(parents=True, exist_ok=True)
        save_inference_data(idata, out_dir / "posterior" / f"{layer_file(name)}.nc")
        log.info(
            "layer %r: maps, scores, concepts and posterior in %.1f s", name, time.perf_counter() - start
        )


IDATA_BYTES = 2**30  # memory for one layer's InferenceData draws


def fitted_rank(model) -> int | None:
    """The factors per component of a fitted low-rank ``model`` (``rank=None`` resolved to
    ``min(16, D - 1)``); ``None`` for the other covariance types."""
    if model.covariance != "lowrank":
        return None
    return int(model.posterior_.params.loadings.shape[-1])


def posterior_draws(model, num_draws: int, scored_points: int, max_bytes: int = IDATA_BYTES) -> int:
    """The most draws (at most ``num_draws``, at least 4) of ``model``'s posterior whose InferenceData
    fits in ``max_bytes``: wide full-covariance layers (e.g. raw channels, D = 320: 3 GiB for 64 draws)
    get fewer draws instead of failing the run."""
    from ..diagnostics.inference_data import estimate_bytes

    K, D, cov = model.truncation, model.n_features_in_, model.covariance
    per_draw = estimate_bytes(1, 1, K, D, scored_points, cov, False, fitted_rank(model) or 0)
    return int(max(4, min(num_draws, max_bytes // max(per_draw, 1))))


def _write_outputs(out_dir: Path, images, metrics: dict, results: _LayerResults, fig_cfg: dict) -> None:
    """Step 3 of :func:`analyze`: the images, the evaluation table, the figures (timed into
    ``metrics``), ``metrics.json`` and ``summary.md``."""
    timings = metrics["timings"]
    save_images(out_dir, images)
    if results.eval_rows:
        from ..evaluation import evaluation_table

        with atomic_path(out_dir / "evaluation.csv", suffix=".csv") as tmp:
            evaluation_table(results.eval_rows).to_csv(tmp)
    t0 = time.perf_counter()
    fig_cfg = dict(fig_cfg)
    report = fig_cfg.pop("report", True)
    if fig_cfg.pop("enabled", True):
        write_figures(out_dir, images, results.maps, results.k_draws, _true_k(images), **fig_cfg)
        if results.concept_maps:
            from ..viz.concepts import write_concept_figures

            t1 = time.perf_counter()
            write_concept_figures(out_dir, images, results.concept_maps, results.concept_sel, fig_cfg)
            timings["concept_figure_seconds"] = time.perf_counter() - t1
    timings["figure_seconds"] = time.perf_counter() - t0
    atomic_write_json(out_dir / "metrics.json", metrics)
    write_summary(out_dir, metrics, results.eval_rows)
    if report:  # report.html from the files just written, then its time recorded
        from .html_report import write_html_report
        from .outputs import RunOutputs

        t0 = time.perf_counter()
        write_html_report(RunOutputs.staged(out_dir), prototypes=fig_cfg.get("prototypes", 6))
        timings["report_seconds"] = time.perf_counter() - t0
        atomic_write_json(out_dir / "metrics.json", metrics)
        write_summary(out_dir, metrics, results.eval_rows)


def _raw_points(model, images, name, acts, device, seed) -> torch.Tensor | None:
    """The layer's untransformed activations at the same positions (for NMF), when non-negative."""
    raw = extract(
        model,
        images,
        [name],
        device=device,
        seed=seed,
        progress=False,
        positions_per_image=acts[name].meta.get("positions_per_image"),
        smooth=acts[name].meta.get("smooth"),
    )[name]
    if not torch.equal(raw.index, acts[name].index):
        raise RuntimeError(f"layer {name!r}: raw and transformed extraction sampled different positions.")
    pts = raw.tensor()
    return pts if bool((pts >= 0).all()) else None
