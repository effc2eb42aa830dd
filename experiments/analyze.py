"""The main job: what has each layer of a convnet learned?

    python -m experiments.analyze [overrides]          # e.g. data=folder data.root=DIR net=resnet18
    python -m experiments.analyze -m prior=dp,pitman_yor prior.concentration=0.1,1,10

Trains the small CNN on texture patches (or loads it from the cache), extracts every conv layer,
fits one DPGMM per layer in batched calls and writes metrics.json, summary.md, figures/,
maps/<layer>.npz, posterior/<layer>.nc and report.html into the Hydra run directory.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import matplotlib
from omegaconf import DictConfig, OmegaConf

from dpmodels import DPGMM
from dpmodels.analysis import analyze, obtain_network
from dpmodels.analysis.network import check_layers
from dpmodels.spatial import SpatialDPGMM

from .builders import check_importance_config, dataset_from_config, dpgmm_kwargs
from .common import (
    check_same_config,
    guard_argv,
    job,
    mark_done,
    mark_started,
    output_dir,
    should_run,
    start_process_group,
    stop_process_group,
)
from .schema import register

matplotlib.use("Agg")  # an entry point writes figure files; the library never picks a backend
log = logging.getLogger("dpmodels.analyze")
logging.getLogger("arviz.preview").setLevel(logging.WARNING)  # its import notes are not for users
register()


def run(cfg: DictConfig, group=None) -> dict | None:
    """The job; with ``group`` (launched by ``torchrun``) every rank runs it data-parallel and only
    rank 0 reads and writes the run directory (``group.run_dir`` holds rank 0's)."""
    out_dir = output_dir()
    if group is not None:  # the same config on every rank; rank 0's run directory and decision for all
        check_same_config(group, cfg)
        out_dir = Path(group.from_rank0(lambda: str(out_dir), "the run directory"))
        group.run_dir = out_dir
    go = (
        should_run(out_dir, cfg, cfg.overwrite)
        if group is None
        else group.from_rank0(lambda: should_run(out_dir, cfg, cfg.overwrite), "the run-directory check")
    )
    if not go:
        return None
    fit_kwargs = dpgmm_kwargs(cfg.prior, cfg.infer)
    check_rank(cfg.infer, cfg.layers)
    DPGMM(**fit_kwargs, device=cfg.device).validate()  # the prior/inference settings, before any work
    if cfg.model.coupling != 0:
        SpatialDPGMM(
            **fit_kwargs, coupling=cfg.model.coupling, coupled_max_iter=cfg.model.coupled_max_iter
        ).validate()
    images = dataset_from_config(cfg.data)
    log.info(
        "data: %s, %d images %s, masks: %s", images.name, len(images), images.size, images.masks is not None
    )
    if OmegaConf.is_missing(cfg.net, "name") or not cfg.net.name:
        raise ValueError(
            f"net={cfg.net.source} needs net.name=<model>: a timm model name (convnext_tiny), a Hugging Face hub "
            "id or folder (facebook/dinov2-small), or an open_clip architecture (ViT-B-32)."
        )
    net = OmegaConf.to_container(cfg.net, resolve=True)
    check_layers(
        net["name"], cfg.layers.names, in_channels=images.channels, widths=net["widths"],
        source=net["source"], options=net["options"],
    )  # fmt: skip
    if group is None:
        staging = mark_started(out_dir, cfg)  # results are written here, published by mark_done
    else:
        staging = Path(
            group.from_rank0(lambda: str(mark_started(out_dir, cfg)), "claiming the run directory")
        )
    name = net.pop("name")

    def network(**settings):  # rank 0 first (it may train and cache the network), then the others
        if group is None:
            return obtain_network(name, in_channels=images.channels, cache_dir=cfg.cache_dir, **settings)
        first = group.from_rank0(
            lambda: obtain_network(name, in_channels=images.channels, cache_dir=cfg.cache_dir, **settings),
            "obtaining the network",
            share=False,
        )
        if group.rank == 0:
            return first
        return obtain_network(name, in_channels=images.channels, cache_dir=cfg.cache_dir, **settings)

    model, net_info = network(device=cfg.device, progress=cfg.infer.progress, **net)
    if cfg.importance.enabled:  # before any extraction or fit
        check_importance_config(model, cfg.layers.names, images, cfg.device)
    metrics = _analyze(cfg, images, model, staging, net_info, group)
    if cfg.control:  # the same architecture with random weights: what learning adds
        net.update(weights=None, train=False)
        control, control_info = network(device=cfg.device, **net)
        log.info("control: %s with random weights, into control/", name)
        control_metrics = _analyze(
            cfg, images, control, staging / "control", control_info, group, importance=False
        )
        if cfg.viz.enabled and metrics is not None:
            paper_figure(
                staging, images, {"trained": metrics, "random weights": control_metrics}, cfg.viz.dpi
            )
        if cfg.viz.report and metrics is not None:  # again, now with the paper's figure and the control
            _rewrite_report(staging, metrics, cfg.viz.prototypes)
    if metrics is None:  # a rank other than 0: its share is done, rank 0 publishes
        return None
    mark_done(out_dir, cfg, {"layers": list(metrics["layers"])})
    log.info("results in %s (summary.md, metrics.json, figures/)", out_dir)
    return metrics


def check_rank(infer: DictConfig, layers: DictConfig) -> None:
    """``infer.rank`` of ``infer.covariance=lowrank`` against what the config says of the layers'
    width, before any work: ``1 <= rank < D``, and ``layers.pca_dim`` bounds ``D``. (A layer with
    fewer channels than ``pca_dim`` is checked once extracted, before the first fit.)"""
    rank, pca_dim = infer.rank, layers.pca_dim
    if infer.covariance != "lowrank" or rank is None:  # rank=null: min(16, D - 1) per layer
        return
    if rank < 1:
        raise ValueError(
            f"infer.rank={rank} but infer.covariance=lowrank needs at least one factor per component "
            "(1 <= infer.rank < D); try infer.rank=null for min(16, D - 1) per layer."
        )
    if pca_dim is not None and rank >= pca_dim:
        raise ValueError(
            f"infer.rank={rank} but layers.pca_dim={pca_dim} leaves every layer at most D={pca_dim} "
            "features, and infer.covariance=lowrank needs 1 <= infer.rank < D; use "
            f"infer.rank<={pca_dim - 1}, infer.rank=null (min(16, D - 1) per layer) or a larger "
            "layers.pca_dim."
        )


def _analyze(
    cfg: DictConfig, images, model, out_dir: Path, net_info: dict, group=None, importance: bool = True
) -> dict | None:
    layers = OmegaConf.to_container(cfg.layers, resolve=True)
    return analyze(
        images,
        model,
        out_dir,
        layers=layers.pop("names"),
        extraction=layers,
        fitting={"fit_points": cfg.infer.fit_points, "heldout_points": cfg.infer.heldout_points},
        dpgmm=dpgmm_kwargs(cfg.prior, cfg.infer),
        spatial=OmegaConf.to_container(cfg.model) if cfg.model.coupling > 0 else None,
        num_draws=cfg.infer.num_draws,
        map_draws=cfg.infer.map_draws,
        figures=OmegaConf.to_container(cfg.viz),
        baselines=cfg.evaluate.baselines,
        k_max=cfg.evaluate.k_max,
        network=net_info,
        importance=OmegaConf.to_container(cfg.importance) if importance and cfg.importance.enabled else None,
        seed=cfg.seed,
        device=cfg.device,
        progress=cfg.infer.progress,
        group=group,
    )


def _rewrite_report(run_dir: Path, metrics: dict, prototypes: int) -> None:
    """``report.html`` of ``run_dir`` rebuilt (it links ``figures/seed_paper.png`` and
    ``control/report.html``, written after it); its time is added to ``timings.report_seconds``."""
    import time

    from dpmodels.analysis.html_report import write_html_report
    from dpmodels.analysis.outputs import RunOutputs
    from dpmodels.io import atomic_write_json

    t0 = time.perf_counter()
    write_html_report(RunOutputs.staged(run_dir), prototypes=prototypes)
    timings = metrics["timings"]
    timings["report_seconds"] = timings.get("report_seconds", 0.0) + time.perf_counter() - t0
    atomic_write_json(run_dir / "metrics.json", metrics)


def paper_figure(run_dir: Path, images, networks: dict[str, dict], dpi: int = 110) -> Path:
    """``figures/seed_paper.png``: image 0, then each layer's cluster map and entropy map, one pair
    of rows per network (``{label: metrics}``, the network's results in ``run_dir`` or a subfolder)."""
    from dpmodels.analysis.outputs import layer_file, load_layer_maps
    from dpmodels.viz import plot_paper_figure, save_figure

    rows, intervals = {}, {}
    for (label, metrics), sub in zip(networks.items(), ("", "control"), strict=False):
        rows[label] = [
            load_layer_maps(run_dir / sub / "maps" / f"{layer_file(k)}.npz") for k in metrics["layers"]
        ]
        intervals[label] = {k: tuple(v["n_active_interval"]) for k, v in metrics["layers"].items()}
    fig = plot_paper_figure(images.images[0], rows, 0, k_intervals=intervals)
    return save_figure(fig, run_dir / "figures" / "seed_paper.png", dpi=dpi)


@guard_argv
@hydra.main(version_base="1.3", config_path="../conf", config_name="analyze")
def main(cfg: DictConfig) -> None:
    """``python -m experiments.analyze ...``, or ``torchrun --nproc_per_node=N -m experiments.analyze ...``
    for a data-parallel job (rank 0 writes the run directory)."""
    group = start_process_group(cfg.device)
    try:
        with job(cfg, lock=group is None or group.rank == 0):  # user errors, schema, threads, lock
            run(cfg, group)
    finally:
        stop_process_group(group, output_dir(), getattr(group, "run_dir", None))


if __name__ == "__main__":
    main()
