"""Shared helpers of the entry-point tests: running ``python -m <module>`` as a user does."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cli(args, tmp_path, module="experiments.analyze", check=True, timeout=900):
    """Run ``python -m module *args`` from ``tmp_path`` (network cache in ``tmp_path / "cache"``,
    no ``DPMODELS_TRACEBACK``); with ``check`` an exit status other than 0 fails with the tails of
    stdout and stderr. Returns the ``CompletedProcess``."""
    env = {**os.environ, "DPMODELS_CACHE": str(Path(tmp_path) / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("DPMODELS_TRACEBACK", None)
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
        )
    return proc
