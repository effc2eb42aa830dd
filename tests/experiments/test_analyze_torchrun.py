"""The main job on two data-parallel processes: ``torchrun --nproc_per_node=2 -m experiments.analyze``.

Rank 0 alone writes the run directory; its results equal those of the single-process job with the
same overrides (the fits agree up to the order of floating-point sums).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["experiment=tiny", "infer.progress=false"]


def _run(cmd: list[str], tmp_path: Path, run_dir: Path | None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DPMODELS_CACHE": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [*cmd, *ARGS, *([f"hydra.run.dir={run_dir}"] if run_dir else [])],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_torchrun_main_job_writes_one_run_equal_to_the_single_process_job(tmp_path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    # the default, time-stamped run directory: each rank's Hydra picks one; rank 0's is the run
    parallel = _run([*torchrun, "-m", "experiments.analyze"], tmp_path, None)
    (run_dir,) = [p for p in (tmp_path / "outputs" / "analyze").iterdir()]  # no stray folder from rank 1
    run_dir.rename(tmp_path / "parallel")
    single = _run([sys.executable, "-m", "experiments.analyze"], tmp_path, tmp_path / "single")
    a = json.loads((tmp_path / "single" / "metrics.json").read_text())
    b = json.loads((tmp_path / "parallel" / "metrics.json").read_text())
    assert b["parallel"] == {"world_size": 2, "backend": "gloo"} and "parallel" not in a
    assert list(a["layers"]) == list(b["layers"])
    for name, la in a["layers"].items():
        lb = b["layers"][name]
        assert lb["n_active"] == la["n_active"] and lb["fit_points"] == la["fit_points"]
        assert abs(lb["elbo"] - la["elbo"]) < 1e-4 and abs(lb["heldout_loglik"] - la["heldout_loglik"]) < 1e-4
        assert abs(lb["ari"] - la["ari"]) < 1e-3 and abs(lb["nmi"] - la["nmi"]) < 1e-3
    # the same files: one run directory, written once, by rank 0
    files = {
        p.relative_to(tmp_path / "single").as_posix() for p in (tmp_path / "single").rglob("*") if p.is_file()
    }
    got = {
        p.relative_to(tmp_path / "parallel").as_posix()
        for p in (tmp_path / "parallel").rglob("*")
        if p.is_file()
    }
    assert files - {"analyze.log"} <= got
    assert any(p.startswith("figures/") for p in got) and any(p.startswith("posterior/") for p in got)
    assert json.loads((tmp_path / "parallel" / "run_complete.json").read_text())["layers"] == list(
        b["layers"]
    )
    assert "data-parallel: rank 1 of 2" in parallel.stdout + parallel.stderr
    del single


def test_slurm_task_variables_become_torch_distributed_ones():
    from experiments.common import torch_env_from_slurm

    env = {
        "SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
        "SLURM_JOB_NODELIST": "gpu[07-08,11]", "SLURM_JOB_ID": "123456",
    }  # fmt: skip
    assert torch_env_from_slurm(env) == {
        "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07", "MASTER_PORT": "18456",
    }  # fmt: skip
    assert torch_env_from_slurm({**env, "SLURM_JOB_NODELIST": "node5,node6"})["MASTER_ADDR"] == "node5"
    assert torch_env_from_slurm({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == {}  # one task: no group
    assert torch_env_from_slurm({**env, "WORLD_SIZE": "8"}) == {}  # torchrun's own variables win


@pytest.mark.slow
def test_two_slurm_like_tasks_run_the_main_job_data_parallel(tmp_path):
    """Two processes with the variables ``srun --ntasks=2`` sets (no SLURM needed to check the wiring)."""
    env = {
        **os.environ, "DPMODELS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
        "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "localhost", "SLURM_JOB_ID": str(os.getpid()),
    }  # fmt: skip
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "experiments.analyze", *ARGS, f"hydra.run.dir={tmp_path / 'run'}"]
    procs = [
        subprocess.Popen(
            cmd,
            cwd=tmp_path,
            env={**env, "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["parallel"] == {"world_size": 2, "backend": "gloo"}
    assert "[rank 1] data-parallel: rank 1 of 2" in outs[1]
