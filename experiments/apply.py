"""Apply a finished run to new images, without refitting:

    python -m experiments.apply run=outputs/analyze/<time> data=ihc
    python -m experiments.apply run=DIR data=folder data.root=MY_IMAGES importance=true

The run's network, transforms and fitted posteriors (``fits/<layer>.pt``) map the new images;
the results go into a new run directory (``outputs/apply/<time>``), never into the reference run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
import matplotlib
from omegaconf import DictConfig, OmegaConf

from dpmodels.analysis import RunOutputs
from dpmodels.analysis.apply import apply_run, run_network

from .builders import check_importance_config, dataset_from_config
from .common import guard_argv, job, mark_done, mark_started, output_dir, should_run
from .schema import register

matplotlib.use("Agg")
log = logging.getLogger("dpmodels.apply")
logging.getLogger("arviz.preview").setLevel(logging.WARNING)
register()


def run(cfg: DictConfig) -> dict | None:
    out_dir = output_dir()
    ref_dir = Path(cfg.run)
    if not ref_dir.is_dir():
        raise FileNotFoundError(
            f"run={cfg.run}: no such directory; pass the directory of a finished run of "
            "`python -m experiments.analyze` (e.g. run=outputs/analyze/<time>)."
        )
    if out_dir.resolve() == ref_dir.resolve() or ref_dir.resolve() in out_dir.resolve().parents:
        raise ValueError(
            f"hydra.run.dir={out_dir} is the reference run or inside it; apply writes into a new run "
            "directory and never changes the reference run: choose another hydra.run.dir."
        )
    reference = RunOutputs(ref_dir)  # refuses an unfinished run or one whose files disagree
    if not should_run(out_dir, cfg, cfg.overwrite):
        return None
    images = dataset_from_config(cfg.data)
    log.info("applying %s to %s: %d images %s", ref_dir, images.name, len(images), images.size)
    model, _ = run_network(reference, cache_dir=cfg.cache_dir, device=cfg.device)
    if cfg.importance.enabled:  # before any extraction
        check_importance_config(model, reference.layers, images, cfg.device)
    staging = mark_started(out_dir, cfg)
    result = apply_run(
        reference, images, model=model, out_dir=staging, device=cfg.device, batch_size=cfg.batch_size,
        figures=OmegaConf.to_container(cfg.viz), progress=False,
        importance=OmegaConf.to_container(cfg.importance) if cfg.importance.enabled else None,
    )  # fmt: skip
    mark_done(out_dir, cfg, {"layers": list(result.layers), "reference": str(ref_dir)})
    for name, r in result.layers.items():
        log.info(
            "%s: log-lik %.2f (reference held-out %.2f), novelty share %.3f",
            name, r["heldout_loglik"], r["reference_heldout_loglik"], r["novelty_share"],
        )  # fmt: skip
    log.info("results in %s (report.html, summary.md, metrics.json, per_image.csv, maps/, figures/)", out_dir)
    return result.layers


@guard_argv
@hydra.main(version_base="1.3", config_path="../conf", config_name="apply")
def main(cfg: DictConfig) -> None:
    """``python -m experiments.apply run=DIR data=<group> [overrides]``."""
    with job(cfg):
        run(cfg)


if __name__ == "__main__":
    main()
