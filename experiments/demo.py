"""Demo: fit a DPGMM to planted clusters and write a short report.

    python -m experiments.demo [overrides]

Writes ``metrics.json``, ``figures/projection.png``, ``figures/elbo.png`` and ``summary.md`` to the
Hydra run directory and prints the summary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import matplotlib
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import adjusted_rand_score

from dpmodels import DPGMM
from dpmodels.data import PlantedMixture
from dpmodels.io import atomic_write_text
from dpmodels.viz import plot_elbo_history, plot_fit_projection

from .common import guard_argv, job
from .schema import register

matplotlib.use("Agg")  # an entry point writes figure files; the library never picks a backend
log = logging.getLogger(__name__)
register()


def run(cfg: DictConfig, out_dir: Path) -> dict:
    """Fit and report; returns the metrics written to ``metrics.json``."""
    mix = PlantedMixture(
        cfg.data.n_clusters, cfg.data.n_features, cfg.data.covariance, cfg.data.separation, seed=cfg.data.seed
    )
    X, labels = mix.sample(cfg.data.n_points)
    X_test, _ = mix.sample(cfg.data.n_points, seed=cfg.data.seed + 10_000)
    model = DPGMM(**OmegaConf.to_container(cfg.model)).fit(X)
    pred = model.predict(X)
    metrics = {
        "n_active": model.n_active_,
        "n_planted": cfg.data.n_clusters,
        "ari": adjusted_rand_score(labels, pred),
        "elbo_per_point": model.elbo_ / len(X),
        "heldout_loglik": model.score(X_test),
        "true_heldout_loglik": float(mix.log_density(X_test).mean()),
        "fit_seconds": model.fit_result_.fit_seconds,
        "iterations": model.n_iter_,
        "converged": model.converged_,
    }
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    entropy = model.posterior_.assignment_entropy(X)[0].numpy()
    fig = plot_fit_projection(X, pred, entropy, model.weights_, model.means_, title=str(model))
    fig.savefig(figures / "projection.png", dpi=110)
    plot_elbo_history(model.elbo_history_).savefig(figures / "elbo.png", dpi=110)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    lines = [
        "# dpmodels demo",
        "",
        f"`{model!r}` on {len(X)} points, D={X.shape[1]}.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    lines += ["", "![clusters](figures/projection.png)", "", "![ELBO](figures/elbo.png)", ""]
    atomic_write_text(out_dir / "summary.md", "\n".join(lines))
    return metrics


@guard_argv
@hydra.main(version_base="1.3", config_path="../conf", config_name="demo")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    with job(cfg, out_dir, lock=False):  # one line per user error, schema check
        metrics = run(cfg, out_dir)
        log.info("results in %s", out_dir)
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
