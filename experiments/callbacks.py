"""Hydra callbacks: ``SweepSummary`` gathers every job of a multirun into ``sweep_summary.csv``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dpmodels.io import atomic_path

log = logging.getLogger(__name__)


def sweep_table(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job and layer: the job's overrides, its status and the layer's metrics.

    Jobs are the sub-directories holding ``.hydra/overrides.yaml``; a job without ``metrics.json``
    (failed or still running) gets one row with ``status = "missing"``."""
    rows = []
    for job in sorted(Path(sweep_dir).iterdir(), key=lambda p: (len(p.name), p.name)):
        overrides_file = job / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            continue
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        base = {"job": job.name, "overrides": " ".join(overrides)}
        base.update(dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra")))
        metrics_file = job / "metrics.json"
        if not metrics_file.is_file():
            rows.append({**base, "status": "missing"})
            continue
        layers = json.loads(metrics_file.read_text()).get("layers", {})
        for layer, values in layers.items():
            rows.append({**base, "status": "done", "layer": layer, **values})
    return pd.DataFrame(rows)


class SweepSummary(Callback):
    """Writes ``<sweep dir>/sweep_summary.csv`` when a multirun ends (also after failed jobs)."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        table = sweep_table(sweep_dir)
        with atomic_path(sweep_dir / "sweep_summary.csv", suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
        log.info("sweep summary: %s (%d rows)", sweep_dir / "sweep_summary.csv", len(table))
