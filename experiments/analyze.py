"""The main job: what has each layer of a convnet learned?

    python -m experiments.analyze [overrides]          # e.g. data=folder data.root=DIR net=resnet18
    python -m experiments.analyze -m prior=dp,pitman_yor prior.concentration=0.1,1,10

Trains the small CNN on texture patches (or loads it from the cache), extracts every conv layer,
fits one DPGMM per layer in batched calls and writes metrics.json, summary.md, figures/,
maps/<layer>.npz and posterior/<layer>.nc into the Hydra run directory.
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

from .builders import dataset_from_config, dpgmm_kwargs
from .common import guard_argv, job, mark_done, mark_started, output_dir, should_run
from .schema import register

matplotlib.use("Agg")  # an entry point writes figure files; the library never picks a backend
log = logging.getLogger("dpmodels.analyze")
logging.getLogger("arviz.preview").setLevel(logging.WARNING)  # its import notes are not for users
register()


def run(cfg: DictConfig) -> dict | None:
    out_dir = output_dir()
    if not should_run(out_dir, cfg, cfg.overwrite):
        return None
    fit_kwargs = dpgmm_kwargs(cfg.prior, cfg.infer)
    DPGMM(**fit_kwargs, device=cfg.device)  # validates the prior/inference settings before any work
    if cfg.model.coupling != 0:
        SpatialDPGMM(**fit_kwargs, coupling=cfg.model.coupling, coupled_max_iter=cfg.model.coupled_max_iter)
    images = dataset_from_config(cfg.data)
    log.info(
        "data: %s, %d images %s, masks: %s", images.name, len(images), images.size, images.masks is not None
    )
    net = OmegaConf.to_container(cfg.net, resolve=True)
    check_layers(net["name"], cfg.layers.names, in_channels=images.channels, widths=net["widths"])
    staging = mark_started(out_dir, cfg)  # results are written here, published by mark_done
    name = net.pop("name")
    model, net_info = obtain_network(
        name,
        in_channels=images.channels,
        cache_dir=cfg.cache_dir,
        device=cfg.device,
        progress=cfg.infer.progress,
        **net,
    )
    metrics = _analyze(cfg, images, model, staging, net_info)
    if cfg.control:  # the same architecture with random weights: what learning adds
        net.update(weights=None, train=False)
        control, control_info = obtain_network(
            name, in_channels=images.channels, cache_dir=cfg.cache_dir, device=cfg.device, **net
        )
        log.info("control: %s with random weights, into control/", name)
        control_metrics = _analyze(cfg, images, control, staging / "control", control_info)
        if cfg.viz.enabled:
            paper_figure(
                staging, images, {"trained": metrics, "random weights": control_metrics}, cfg.viz.dpi
            )
    mark_done(out_dir, cfg, {"layers": list(metrics["layers"])})
    log.info("results in %s (summary.md, metrics.json, figures/)", out_dir)
    return metrics


def _analyze(cfg: DictConfig, images, model, out_dir: Path, net_info: dict) -> dict:
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
        seed=cfg.seed,
        device=cfg.device,
        progress=cfg.infer.progress,
    )


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
    with job(cfg):  # one line per user error, schema check, threads, run-directory lock
        run(cfg)


if __name__ == "__main__":
    main()
