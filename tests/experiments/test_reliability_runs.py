"""Run directories that can be trusted, driven through real Hydra runs in subprocesses: a refused
rerun keeps the old labels (and says which keys differ), a failed run does not block the corrected
command, the run directory is locked, results are swapped in whole (an interrupted overwrite keeps
the old run readable), readers refuse a mixed directory, and each job gets its share of the cores."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dpmodels.analysis import RunOutputs
from dpmodels.io import MANIFEST, publish_directory

ROOT = Path(__file__).resolve().parents[2]
TINY = ["experiment=tiny", "viz=none"]


def _env(tmp: Path) -> dict:
    env = {**os.environ, "DPMODELS_CACHE": str(tmp / "cache"), "PYTHONPATH": str(ROOT)}
    for key in ("DPMODELS_TRACEBACK", "OMP_NUM_THREADS", "HYDRA_FULL_ERROR"):
        env.pop(key, None)
    return env


def _cli(args, tmp: Path, module: str = "experiments.analyze", env: dict | None = None):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=tmp,
        env=env or _env(tmp),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def _one_error_line(proc) -> str:
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run that first stopped on a user error (layers.pca_dim=0), then the corrected command into
    the same directory: alpha = 0.1, finished."""
    tmp = tmp_path_factory.mktemp("reliability")
    run_dir = tmp / "run"
    failed = _cli([*TINY, "prior.concentration=0.1", "layers.pca_dim=0", f"hydra.run.dir={run_dir}"], tmp)
    corrected = _cli([*TINY, "prior.concentration=0.1", f"hydra.run.dir={run_dir}"], tmp)
    return tmp, run_dir, failed, _ok(corrected)


# --- item 6: a failed run does not block; a refusal names the differing keys ------------------


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_a_failed_run_does_not_block_the_corrected_command(finished):
    _, run_dir, failed, corrected = finished
    assert "pca_dim" in _one_error_line(failed)
    assert "layers.pca_dim: 0 -> 4" in corrected.stdout + corrected.stderr  # said what replaced what
    run = RunOutputs(run_dir)
    assert run.config["layers"]["pca_dim"] == 4 and not (run_dir / "error.txt").exists()


# --- item 1: a refused rerun leaves the labels of the results it did not write ----------------


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_a_refused_rerun_keeps_the_record_and_names_the_differing_key(finished):
    tmp, run_dir, _, _ = finished
    before = (run_dir / "metrics.json").read_text()
    refused = _cli([*TINY, "prior.concentration=3", f"hydra.run.dir={run_dir}"], tmp)
    assert refused.returncode == 1
    line = _one_error_line(refused)
    assert "already holds the results of a different run" in line
    assert "prior.concentration: 0.1 -> 3.0" in line
    assert "prior.concentration=0.1" in yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text())
    assert yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())["prior"]["concentration"] == 0.1
    run = RunOutputs(run_dir)
    assert run.config["prior"]["concentration"] == 0.1 and "prior.concentration=0.1" in run.overrides
    assert (run_dir / "metrics.json").read_text() == before


@pytest.mark.slow  # four tiny jobs, ~1 min on a busy 2-core machine
def test_a_rerun_of_a_sweep_into_the_same_dir_keeps_labels_and_fails(tmp_path):
    sweep = tmp_path / "sweep"
    _ok(_cli(["-m", *TINY, "prior.concentration=0.1,10", f"hydra.sweep.dir={sweep}"], tmp_path))
    first = pd.read_csv(sweep / "sweep_summary.csv")
    again = _cli(["-m", *TINY, "prior.concentration=3,30", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert again.returncode == 1, again.stderr[-3000:]
    assert "Traceback" not in again.stderr
    table = pd.read_csv(sweep / "sweep_summary.csv")
    done = table[table.status == "done"]
    assert sorted(done["prior.concentration"].unique()) == [0.1, 10.0]
    same = ["job", "layer", "prior.concentration", "n_active", "elbo", "heldout_loglik", "nmi"]
    # the first sweep's rows, unchanged (refused rows have no metrics: integer columns become float)
    pd.testing.assert_frame_equal(done[same].reset_index(drop=True), first[same], check_dtype=False)
    refused = table[table.status == "refused"]
    assert sorted(refused["prior.concentration"]) == [3.0, 30.0]
    assert refused.error.str.contains("prior.concentration: 0.1 -> 3.0").any()
    for job, alpha in (("0", 0.1), ("1", 10.0)):
        assert RunOutputs(sweep / job).config["prior"]["concentration"] == alpha
        overrides = yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
        assert f"prior.concentration={alpha:g}" in overrides


# --- item 5: lock, whole swaps, readers refuse mixed directories ------------------------------


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_a_second_job_into_a_locked_run_directory_is_refused(tmp_path):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a job is writing here right now
        held.write("12345\n")
        held.flush()
        proc = _cli([*TINY, f"hydra.run.dir={run_dir}"], tmp_path)
    line = _one_error_line(proc)
    assert "another job (process 12345) is writing into" in line and str(run_dir) in line
    assert not (run_dir / "run_started.json").exists()


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_run_outputs_refuse_a_mixed_or_unfinished_directory(finished, tmp_path):
    _, run_dir, _, _ = finished
    mixed = tmp_path / "mixed"
    shutil.copytree(run_dir, mixed)
    RunOutputs(mixed).verify()  # a copy of a finished run is a finished run
    with open(mixed / "posterior" / "block1.relu.nc", "ab") as fh:
        fh.write(b"another run's bytes")
    with pytest.raises(ValueError, match="disagree"):
        RunOutputs(mixed)
    unfinished = tmp_path / "unfinished"
    shutil.copytree(run_dir, unfinished)
    (unfinished / MANIFEST).unlink()
    with pytest.raises(FileNotFoundError, match="unfinished or interrupted"):
        RunOutputs(unfinished)


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_every_moment_of_a_swap_reads_as_the_old_run_the_new_run_or_refused(finished, tmp_path, monkeypatch):
    """Stop the publication of a new run after each of its renames: a reader sees the complete old
    run, the complete new run, or a refusal; never a mix."""
    _, run_dir, _, _ = finished
    old_metrics = json.loads((run_dir / "metrics.json").read_text())
    for stop_after in range(12):
        target = tmp_path / f"run{stop_after}"
        shutil.copytree(run_dir, target)
        staging = target / ".staging"
        shutil.copytree(run_dir, staging, ignore=shutil.ignore_patterns(".*", "*.json", "*.log"))
        new_metrics = {**old_metrics, "seed": 99}
        (staging / "metrics.json").write_text(json.dumps(new_metrics))
        with open(staging / "maps" / "block1.relu.npz", "ab") as fh:
            fh.write(b"new")
        calls = {"n": 0}
        real_replace = os.replace

        def stopping_replace(a, b, calls=calls, stop_after=stop_after, real_replace=real_replace):
            if calls["n"] == stop_after:
                raise KeyboardInterrupt
            calls["n"] += 1
            return real_replace(a, b)

        monkeypatch.setattr(os, "replace", stopping_replace)
        try:
            publish_directory(staging, target, {"config_hash": "new"}, keep={".lock", "run_started.json"})
            completed = True
        except KeyboardInterrupt:
            completed = False
        finally:
            monkeypatch.setattr(os, "replace", real_replace)
        try:
            run = RunOutputs(target)
        except FileNotFoundError:
            assert not completed
            continue
        assert run.metrics["seed"] in (0, 99)
        run.verify()  # every file belongs to the run its manifest describes
        assert run.metrics == (new_metrics if run.config_hash == "new" else old_metrics)


@pytest.mark.slow  # a tiny run interrupted during its fit and resumed, ~1 min on a busy 2-core machine
def test_ctrl_c_during_an_overwrite_keeps_the_old_run_and_the_same_command_resumes(finished, tmp_path):
    tmp, run_dir, _, _ = finished
    target = tmp_path / "run"
    shutil.copytree(run_dir, target)
    before = (target / "metrics.json").read_text()
    args = [
        *TINY,
        "prior.concentration=3",
        "overwrite=true",
        "infer.checkpoint_every=0",
        "infer.fit_points=3000",
        "data.num_images=12",
        f"hydra.run.dir={target}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.analyze", *args],
        cwd=tmp,
        env=_env(tmp),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not list((target / ".staging" / "checkpoints").glob("*.ckpt")):
        if proc.poll() is not None:
            pytest.fail("the run ended before writing a fit checkpoint; make the fit longer")
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "rerun the same command to resume" in stderr
    run = RunOutputs(target)  # the complete old run, untouched
    assert run.config["prior"]["concentration"] == 0.1 and (target / "metrics.json").read_text() == before
    resumed = _ok(_cli(args, tmp))
    assert "resuming" in resumed.stdout + resumed.stderr
    run = RunOutputs(target)
    run.verify()
    assert run.config["prior"]["concentration"] == 3.0 and not (target / ".staging").exists()


# --- item 11: threads ---------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_a_single_run_uses_all_cores_and_records_it(finished):
    _, run_dir, _, corrected = finished
    assert RunOutputs(run_dir).record["threads"] == _cores()
    assert f"torch threads: {_cores()} ({_cores()} cores / 1 parallel job)" in corrected.stdout


@pytest.mark.slow  # two tiny jobs under the joblib launcher, ~1 min on a busy 2-core machine
def test_a_parallel_launcher_job_gets_its_share_of_the_cores(tmp_path):
    sweep = tmp_path / "sweep"
    _ok(
        _cli(
            ["-m", *TINY, "hydra/launcher=parallel", "prior.concentration=0.5,2", f"hydra.sweep.dir={sweep}"],
            tmp_path,
        )
    )
    share = max(1, _cores() // 2)  # conf/hydra/launcher/parallel.yaml: n_jobs = 2
    for job in ("0", "1"):
        assert RunOutputs(sweep / job).record["threads"] == share
        assert (
            f"torch threads: {share} ({_cores()} cores / 2 parallel jobs)"
            in (sweep / job / "analyze.log").read_text()
        )
