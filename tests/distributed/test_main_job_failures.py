"""The data-parallel main job when a rank goes wrong, launched as SLURM launches tasks (one process
per rank with its own RANK/WORLD_SIZE, no torchrun agent to stop the others): a rank killed mid-run
makes the surviving rank stop at once with one line, not wait forever; ranks given different
configs are refused on every rank, naming the keys."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["experiment=tiny", "data.num_images=24", "infer.fit_points=20000", "viz=none"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(tmp: Path, run_dir: Path, extra: dict[int, list[str]]) -> list[tuple[subprocess.Popen, Path]]:
    port, procs = _free_port(), []
    for rank in (0, 1):
        env = {
            **os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "DPMODELS_CACHE": str(tmp / "cache"),
            "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DPMODELS_DIST_TIMEOUT": "600",
        }  # fmt: skip
        env.pop("DPMODELS_TRACEBACK", None)
        log = tmp / f"rank{rank}.log"
        cmd = [
            sys.executable,
            "-m",
            "experiments.analyze",
            *ARGS,
            *extra.get(rank, []),
            f"hydra.run.dir={run_dir}",
        ]
        with open(log, "w") as fh:
            procs.append((subprocess.Popen(cmd, cwd=tmp, env=env, stdout=fh, stderr=subprocess.STDOUT), log))
    return procs


@pytest.mark.slow  # two processes that import torch, Pyro and Hydra
def test_a_rank_killed_mid_run_stops_the_other_with_one_line(tmp_path):
    run_dir = tmp_path / "run"
    (p0, log0), (p1, log1) = _start(tmp_path, run_dir, {})
    try:
        deadline = time.monotonic() + 300
        while "fitting" not in log1.read_text() and time.monotonic() < deadline and p1.poll() is None:
            time.sleep(0.05)
        assert p1.poll() is None, log1.read_text()[-2000:]
        p1.kill()  # SIGKILL, mid-fit
        killed = time.monotonic()
        rc = p0.wait(timeout=120)  # far below DPMODELS_DIST_TIMEOUT: the dead peer is noticed at once
        waited = time.monotonic() - killed
    finally:
        for p in (p0, p1):
            if p.poll() is None:
                p.kill()
                p.wait()
    out = log0.read_text()
    assert rc == 1 and waited < 60, (rc, waited, out[-3000:])
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "CollectiveError" in errors[0] and "Another rank crashed" in errors[0], out[
        -3000:
    ]
    assert "Rerun the same command on every rank" in errors[0] and "GLHF" not in errors[0]
    assert "Traceback" not in out
    assert "CollectiveError" in (run_dir / "error.txt").read_text()
    assert not (run_dir / "run_complete.json").exists()


@pytest.mark.slow
def test_ranks_given_different_configs_are_refused_on_every_rank(tmp_path):
    run_dir = tmp_path / "run"
    procs = _start(tmp_path, run_dir, {1: ["prior.concentration=3.0"]})
    rcs = [p.wait(timeout=300) for p, _ in procs]
    for (_, log), rc in zip(procs, rcs, strict=True):
        out = log.read_text()
        errors = [line for line in out.splitlines() if line.startswith("error:")]
        assert rc == 1 and len(errors) == 1, out[-3000:]
        assert (
            "were given different configs" in errors[0]
            and "rank 1 differs from rank 0 in prior.concentration: 1.0 -> 3.0" in errors[0]
        )
        assert "Traceback" not in out
    assert not (run_dir / ".staging").exists()  # refused before the run directory was claimed
