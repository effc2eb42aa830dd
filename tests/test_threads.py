"""Fits share the cores with the other processes that fit at the same time (dpmodels.threads)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from dpmodels import DPGMM, threads
from dpmodels.data import PlantedMixture

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _automatic(monkeypatch):
    for name in ("DPMODELS_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    threads.set_threads(None)
    yield
    threads.set_threads(None)
    torch.set_num_threads(before)


def _sleeper():
    """A real process that stays alive (another 'fitting' process) until killed."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _register_other(pid: int) -> Path:
    folder = threads._registry()
    folder.mkdir(exist_ok=True)
    token = folder / str(pid)
    token.touch()
    return token


def test_a_fit_alone_uses_the_cores_it_may_run_on_and_restores_torchs_count():
    torch.set_num_threads(threads.available_cores())
    seen = []
    with threads.fit_threads() as n:
        seen.append(n)
        assert (threads._registry() / str(os.getpid())).exists()
    assert not (threads._registry() / str(os.getpid())).exists()
    others = threads.fitting_processes()  # other processes of this user may be fitting right now
    assert seen[0] == max(1, threads.available_cores() // (others + 1))
    assert torch.get_num_threads() == threads.available_cores()


def test_another_fitting_process_halves_the_share_at_the_next_step_and_a_dead_one_counts_for_nothing():
    cores = threads.available_cores()
    torch.set_num_threads(cores)
    child = _sleeper()
    token = None
    try:
        with threads.fit_threads():
            before = threads.fitting_processes()
            token = _register_other(child.pid)
            assert threads.fitting_processes() == before + 1
            n = threads.rebalance(force=True)
            assert n == max(1, cores // (before + 1))
            assert torch.get_num_threads() == n
            child.kill()
            child.wait()
            assert threads.fitting_processes() == before  # stale file of an ended process: removed
            assert not token.exists()
    finally:
        child.kill()
        child.wait()
        if token is not None and token.exists():
            token.unlink()


def test_explicit_counts_win_and_torchs_own_lower_count_is_kept():
    threads.set_threads(1)
    assert threads.auto_threads() == (1, "dpmodels.set_threads")
    threads.set_threads(None)
    torch.set_num_threads(1)
    with threads.fit_threads() as n:
        assert n == 1  # torch.set_num_threads(1) before a fit still means one thread
    with pytest.raises(ValueError, match="positive integer or None"):
        threads.set_threads(0)
    with pytest.raises(ValueError, match="positive integer or None"):
        threads.set_threads(True)


def test_omp_num_threads_is_honoured(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads.auto_threads() == (1, "OMP_NUM_THREADS")
    monkeypatch.setenv("DPMODELS_THREADS", "3")
    assert threads.auto_threads() == (3, "DPMODELS_THREADS")


def test_every_engine_fits_inside_the_share():
    """DPGMM.fit (natural engine) registers while it runs and gives the count back afterwards."""
    X = np.asarray(PlantedMixture(3, 3, seed=0).sample(600)[0])
    torch.set_num_threads(threads.available_cores())
    model = DPGMM(truncation=8, seed=0).fit(X)
    assert model.n_active_ == 3
    assert not (threads._registry() / str(os.getpid())).exists()
    assert torch.get_num_threads() == threads.available_cores()


WORKER = """
import json, sys, time, numpy as np, torch
from pathlib import Path
from dpmodels import threads
folder, index = Path(sys.argv[1]), sys.argv[2]
torch.set_num_threads(threads.available_cores())
with threads.fit_threads():
    (folder / f"in-{index}").touch()
    deadline = time.time() + 30
    while len(list(folder.glob("in-*"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    n = threads.rebalance(force=True)
    (folder / f"n-{index}").write_text(json.dumps([n, threads.fitting_processes()]))
    while len(list(folder.glob("n-*"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
"""


def test_two_processes_fitting_at_once_split_the_cores(tmp_path):
    """The contention the benchmark measures (experiments/bench/contention.py): two real processes,
    each inside a fit, take half the cores each instead of all of them."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "DPMODELS_THREADS")}
    env["PYTHONPATH"] = str(ROOT)
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path), str(i)], env=env) for i in range(2)
    ]
    deadline = time.time() + 60
    for p in procs:
        assert p.wait(timeout=max(1, deadline - time.time())) == 0
    for i in range(2):
        n, fitting = json.loads((tmp_path / f"n-{i}").read_text())
        assert fitting >= 2
        assert n == max(1, threads.available_cores() // fitting)
        assert n <= max(1, threads.available_cores() // 2)
