"""Transfer experiment: do a layer's DPGMM shift scores predict how well it transfers?

    python -m experiments.transfer                          # default scenario (8 conditions x 3 layers)
    python -m experiments.transfer scenario=noise           # family_b | contrast | noise | colour | digits
    python -m experiments.transfer scenario=folder scenario.folder=DIR   # scores only (no labels)
    python -m experiments.transfer -m task.shots=5,10,20     # multirun: sweep_summary.csv per layer
    python -m experiments.transfer net=efficientnet_lite0    # ImageNet network: which stage transfers

Loads (or trains and caches) the small CNN on texture family A, fits one DPGMM per layer on fresh
source patches (saved as ArviZ InferenceData in posterior/<layer>.nc), then per target condition
scores every layer, measures few-shot transfer against a target-trained reference at the same depth
(dpmodels.transfer.report.DROP_DEFINITION) and CKA. Writes transfer_table.csv, correlations.csv,
figures/, posterior/, metrics.json and summary.md into the run directory.
"""

from __future__ import annotations

import logging
import time

import hydra
import matplotlib
from omegaconf import DictConfig, OmegaConf

from dpmodels.analysis import obtain_network
from dpmodels.data import TEXTURE_FAMILIES, texture_patches
from dpmodels.estimator import DPGMM
from dpmodels.io import atomic_write_json
from dpmodels.nets import build_net
from dpmodels.transfer import experiment as tx
from dpmodels.transfer import report

from .common import guard_argv, job, mark_done, mark_started, output_dir, should_run
from .transfer_schema import register

matplotlib.use("Agg")
log = logging.getLogger("dpmodels.transfer")
register()


def run(cfg: DictConfig) -> dict | None:
    out_dir = output_dir()
    if not should_run(out_dir, cfg, cfg.overwrite):
        return None
    t0 = time.perf_counter()
    if cfg.net is not None:
        from .transfer_pretrained import run_pretrained

        return run_pretrained(cfg, out_dir)
    src_cfg, sc, task, score = cfg.source, cfg.scenario, cfg.task, cfg.score
    if src_cfg.family not in TEXTURE_FAMILIES:
        raise ValueError(f"source.family must be one of {sorted(TEXTURE_FAMILIES)}, got {src_cfg.family!r}.")
    dpgmm = {"truncation": score.truncation, "covariance": score.covariance}
    DPGMM(**dpgmm).validate()  # the settings, before any work
    conditions = tx.make_conditions(
        source_family=src_cfg.family,
        families=list(sc.families),
        control=sc.control,
        digits=sc.digits,
        shifts={k: list(sc[k]) for k in ("contrast", "noise", "colour", "blur") if sc[k]},
        folder=sc.folder,
        size=src_cfg.size,
        channels=3,
        train_per_class=task.train_per_class,
        test_per_class=task.test_per_class,
        convert_channels=sc.convert_channels,
        seed=cfg.seed,
    )
    source = texture_patches(src_cfg.score_per_class, src_cfg.size, src_cfg.family, seed=cfg.seed + 20)
    widths = list(src_cfg.widths)
    layers = list(score.layers) if score.layers else [f"block{b + 1}.relu" for b in range(len(widths))]
    scoring = {k: score[k] for k in ("heldout_fraction", "min_points", "novelty_quantile")}
    extraction = {k: score[k] for k in ("positions_per_image", "standardize", "pca_dim")}
    probe_net = build_net(
        "small_cnn", in_channels=3, num_classes=len(TEXTURE_FAMILIES[src_cfg.family]), widths=widths
    )  # untrained: size checks before the (cached) training
    for cond in conditions:
        tx.check_scoreable(probe_net, layers, cond.score, f"target {cond.name!r}",
                           positions_per_image=score.positions_per_image, min_points=score.min_points)  # fmt: skip
    staging = mark_started(out_dir, cfg)  # results are written here, published by mark_done
    log.info("scenario %s: %d condition(s): %s", sc.name, len(conditions), [c.name for c in conditions])
    model, net_info = obtain_network(
        "small_cnn",
        in_channels=3,
        widths=widths,
        train_family=src_cfg.family,
        train_per_class=src_cfg.train_per_class,
        train_size=src_cfg.size,
        epochs=src_cfg.epochs,
        seed=cfg.seed,
        cache_dir=cfg.cache_dir,
        device=cfg.device,
        progress=cfg.progress,
    )
    table = tx.run_conditions(
        model,
        source,
        conditions,
        layers,
        extraction=extraction,
        dpgmm=dpgmm,
        scoring=scoring,
        finetune={k: task[k] for k in ("shots", "seeds", "epochs", "batch_size", "lr", "probe")},
        target_training={"epochs": task.target_epochs},
        seed=cfg.seed,
        cache_dir=cfg.cache_dir,
        device=cfg.device,
        posterior_dir=staging / "posterior",
        posterior_draws=score.posterior_draws,
        progress=cfg.progress,
    )
    corr = report.correlate(table, n_boot=score.n_boot, seed=cfg.seed)
    info = {
        "scenario": sc.name,
        "conditions": [c.name for c in conditions],
        "layers": layers,
        "source": f"small CNN {widths} on texture family {src_cfg.family} (test accuracy "
        f"{net_info.get('test_accuracy', float('nan')):.3f}); DPGMM fitted on fresh source patches",
        "measured transfer": report.describe_measurement(OmegaConf.to_container(task)),
        "source network cached": bool(net_info.get("loaded_from_cache", False)),
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }
    verdict = report.write_report(staging, table, corr, info)
    metrics = {
        **info,
        "layer_names": layers,
        # per-layer scalars averaged over the conditions (experiments.callbacks.sweep_table reads these)
        "layers": report.layer_summary(table),
        "drop_definition": report.DROP_DEFINITION,
        "measurement_check": report.measurement_check(table),
        "network": net_info,
        "verdict": verdict,
        "n_points": int(table.transfer_drop.notna().sum()),
        "correlations": corr.to_dict(orient="records"),
        "config": OmegaConf.to_container(cfg),
    }
    atomic_write_json(staging / "metrics.json", metrics)
    mark_done(out_dir, cfg, {"conditions": info["conditions"]})
    log.info("results in %s (%.0f s): %s", out_dir, info["wall_seconds"], verdict)
    return metrics


@guard_argv
@hydra.main(version_base="1.3", config_path="../conf", config_name="transfer")
def main(cfg: DictConfig) -> None:
    with job(cfg):  # one line per user error, schema check, threads, run-directory lock
        run(cfg)


if __name__ == "__main__":
    main()
