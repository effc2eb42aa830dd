"""Hydra callbacks: ``SweepSummary`` gathers every job of a multirun into ``sweep_summary.csv``;
``Preflight`` checks that the output folder can be written before Hydra creates it."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import sys
from pathlib import Path

import pandas as pd
import yaml
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dpmodels.io import atomic_path, manifest_problems

from .common import ATTEMPTS, DONE_FILE, ERROR_FILE, STARTED_FILE

log = logging.getLogger(__name__)


def _labels(overrides: list[str]) -> dict:
    return dict(o.lstrip("+~").split("=", 1) for o in overrides if "=" in o and not o.startswith("hydra"))


def _job_rows(job: Path) -> list[dict]:
    """The rows of one job directory, labelled by the project's record of the run it holds."""
    done, started = job / DONE_FILE, job / STARTED_FILE
    record_file = done if done.is_file() else started if started.is_file() else None
    if record_file is None:  # written before the project kept its own record: Hydra's files
        overrides_file = job / ".hydra" / "overrides.yaml"
        if not overrides_file.is_file():
            return []
        overrides = yaml.safe_load(overrides_file.read_text()) or []
        record = {}
    else:
        record = json.loads(record_file.read_text())
        overrides = record.get("overrides", [])
    base = {"job": job.name, "overrides": " ".join(overrides), **_labels(overrides)}
    metrics_file = job / "metrics.json"
    if record_file is started or not metrics_file.is_file():
        status = "failed" if (job / ERROR_FILE).is_file() else "unfinished" if record else "missing"
        row = {**base, "status": status}
        if (job / ERROR_FILE).is_file():
            row["error"] = (job / ERROR_FILE).read_text().strip()
        return [row]
    if "files" in record and manifest_problems(job, record["files"]):
        return [{**base, "status": "incomplete"}]
    layers = json.loads(metrics_file.read_text()).get("layers", {})
    return [{**base, "status": "done", "layer": layer, **values} for layer, values in layers.items()]


def failed_attempts(sweep_dir: str | Path) -> list[dict]:
    """The jobs of the last multirun into ``sweep_dir`` that failed or were refused."""
    folder = Path(sweep_dir) / ATTEMPTS
    if not folder.is_dir():
        return []
    rows = [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return sorted(rows, key=lambda r: (len(r["job"]), r["job"]))


def sweep_table(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per job and layer: the overrides of the run the job directory holds (from its own
    record, ``run_complete.json``), its status and the layer's metrics; plus one row per job of
    the last multirun that failed or was refused (status ``failed`` / ``refused``, its overrides and
    ``error``). A job directory without finished results gets one row with status ``failed``
    (``error.txt``), ``unfinished``, ``incomplete`` (files disagree with the manifest) or
    ``missing``."""
    rows = []
    jobs = [p for p in Path(sweep_dir).iterdir() if p.is_dir() and not p.name.startswith(".")]
    for job in sorted(jobs, key=lambda p: (len(p.name), p.name)):
        rows += _job_rows(job)
    for attempt in failed_attempts(sweep_dir):
        overrides = attempt.get("overrides", [])
        rows.append(
            {
                "job": attempt["job"],
                "overrides": " ".join(overrides),
                **_labels(overrides),
                "status": attempt["status"],
                "error": attempt.get("error"),
            }
        )
    return pd.DataFrame(rows)


class SweepSummary(Callback):
    """Writes ``<sweep dir>/sweep_summary.csv`` when a multirun ends (also after failed jobs); the
    multirun then exits with status 1 when any of its jobs failed or was refused."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        with contextlib.suppress(OSError):
            shutil.rmtree(Path(config.hydra.sweep.dir) / ATTEMPTS)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        table = sweep_table(sweep_dir)
        with atomic_path(sweep_dir / "sweep_summary.csv", suffix=".csv") as tmp:
            table.to_csv(tmp, index=False)
        log.info("sweep summary: %s (%d rows)", sweep_dir / "sweep_summary.csv", len(table))
        failed = failed_attempts(sweep_dir)
        if failed:
            jobs = ", ".join(f"{a['job']} ({a['status']})" for a in failed)
            print(
                f"error: {len(failed)} job(s) of this multirun did not run: {jobs}; see "
                f"{sweep_dir / 'sweep_summary.csv'} (column error).",
                file=sys.stderr,
            )
            raise SystemExit(1)


class Preflight(Callback):
    """Refuse, in one line, an output folder that cannot be written (Hydra would fail creating it
    with a traceback)."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        _check_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        _check_writable(Path(config.hydra.sweep.dir), "hydra.sweep.dir")


def _check_writable(folder: Path, key: str) -> None:
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / ".write_check"):
            pass
        (folder / ".write_check").unlink(missing_ok=True)
    except OSError as err:
        where = err.filename or existing
        print(
            f"error: cannot write the output folder {folder} ({err.strerror or err}: {where}); make it "
            f"writable or choose another with {key}=DIR.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
