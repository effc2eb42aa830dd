"""What every entry point shares: the run-directory guard and one clear message per user error."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dpmodels.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

DONE_FILE = "run_complete.json"
STARTED_FILE = "run_started.json"
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, FileExistsError)


def config_hash(cfg: DictConfig) -> str:
    """Hash of the resolved job config (without Hydra's own section)."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    plain.pop("overwrite", None)  # how to treat earlier results is not part of what is computed
    return hashlib.sha256(json.dumps(plain, sort_keys=True).encode()).hexdigest()[:16]


def output_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def should_run(out_dir: Path, cfg: DictConfig, overwrite: bool) -> bool:
    """``False`` when ``out_dir`` already holds a finished run of this exact config (a resumed
    multirun skips it); ``True`` for a fresh directory or an unfinished run of this config (which
    resumes from its checkpoints); an error when it holds another config's run, unless ``overwrite``.
    Nothing is written here (see :func:`mark_started`)."""
    done, started, digest = out_dir / DONE_FILE, out_dir / STARTED_FILE, config_hash(cfg)
    for marker in () if overwrite else (done, started):
        if not marker.is_file():
            continue
        previous = json.loads(marker.read_text()).get("config_hash")
        if previous != digest:
            raise FileExistsError(
                f"{out_dir} already holds the results of a different run (config {previous}); "
                "choose another hydra.run.dir / hydra.sweep.dir, or pass overwrite=true to replace them."
            )
        if marker is done:
            log.info("%s holds a finished run of this config: skipping (overwrite=true recomputes)", out_dir)
            return False
        log.info("%s holds an unfinished run of this config: resuming it", out_dir)
    return True


def mark_started(out_dir: Path, cfg: DictConfig) -> None:
    """Claim ``out_dir`` for this config; call it after the checks, before the expensive work."""
    atomic_write_json(out_dir / STARTED_FILE, {"config_hash": config_hash(cfg)})


def mark_done(out_dir: Path, cfg: DictConfig, summary: dict | None = None) -> None:
    atomic_write_json(out_dir / DONE_FILE, {"config_hash": config_hash(cfg), **(summary or {})})


@contextlib.contextmanager
def user_errors(out_dir: Path):
    """Turn a user error into one logged line (and ``error.txt`` in the run directory) instead of a
    traceback. A single run exits with status 1; in a multirun the job is recorded as failed in
    ``sweep_summary.csv`` and the other jobs go on. Set ``DPMODELS_TRACEBACK=1`` for the traceback."""
    try:
        yield
    except USER_ERRORS as err:
        if os.environ.get("DPMODELS_TRACEBACK"):
            raise
        message = f"{type(err).__name__}: {err}"
        log.error("%s", message)
        if not isinstance(err, FileExistsError):  # never write into another run's directory
            with contextlib.suppress(OSError):
                atomic_write_text(out_dir / "error.txt", message + "\n")
        print(f"error: {message}", file=sys.stderr)
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            sys.exit(1)
