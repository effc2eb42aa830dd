"""Each notebook pointed at the wrong kind of run, an unfinished run, a sweep directory or no run
stops in its first cell with one message saying what it needs and the command that makes it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dpmodels.analysis import RunKindError, RunOutputs, find_run, require_run
from dpmodels.io import MANIFEST

ROOT = Path(__file__).resolve().parents[2]
TRANSFER_TINY = [
    "scenario=noise", "scenario.noise=[0.3]", "source.widths=[8,16]", "source.train_per_class=20",
    "source.size=16", "source.epochs=2", "source.score_per_class=12", "task.train_per_class=6",
    "task.test_per_class=4", "task.shots=2", "task.seeds=2", "task.epochs=2",
]  # fmt: skip


def _cli(module: str, out: Path, tmp: Path, *overrides: str) -> None:
    env = {
        **os.environ,
        "DPMODELS_CACHE": str(tmp / "cache"),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("DPMODELS_TRACEBACK", None)
    proc = subprocess.run(
        [sys.executable, "-m", module, f"hydra.run.dir={out}", *overrides],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kinds")
    _cli("experiments.analyze", tmp / "analyze", tmp, "experiment=tiny", "viz=none")
    _cli("experiments.transfer", tmp / "transfer", tmp, *TRANSFER_TINY)
    unfinished = tmp / "unfinished"
    shutil.copytree(tmp / "analyze", unfinished)
    (unfinished / MANIFEST).unlink()  # as a run killed before it published its results
    sweep = tmp / "sweep"
    shutil.copytree(tmp / "analyze", sweep / "0")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    return tmp


def _execute(name: str, run_dir: Path) -> list[dict]:
    """Run the notebook against ``run_dir``; the error outputs of its code cells, by cell."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    book = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    before = dict(os.environ)
    os.environ["DPMODELS_RUN_DIR"] = str(run_dir)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])  # this checkout
    try:
        with pytest.raises(CellExecutionError):
            NotebookClient(
                book,
                timeout=300,
                kernel_name="python3",
                resources={"metadata": {"path": str(ROOT / "notebooks")}},
            ).execute()
    finally:
        os.environ.clear()
        os.environ.update(before)
    code = [c for c in book.cells if c.cell_type == "code"]
    return [[o for o in c.get("outputs", []) if o.output_type == "error"] for c in code]


CASES = [
    ("transfer", "analyze", "RunKindError", ["needs a run of `python -m experiments.transfer`",
     "holds a run of `python -m experiments.analyze`", "make one with `python -m experiments.transfer`"]),
    ("layer_maps", "transfer", "RunKindError", ["needs a run of `python -m experiments.analyze`",
     "holds a run of `python -m experiments.transfer`", "`python -m experiments.analyze experiment=tiny`"]),
    ("posterior_diagnostics", "transfer", "RunKindError", ["needs a run of `python -m experiments.analyze`",
     "holds a run of `python -m experiments.transfer`"]),
    ("layer_maps", "unfinished", "FileNotFoundError", ["unfinished or interrupted run of `python -m "
     "experiments.analyze`", "python -m experiments.analyze experiment=tiny viz=none hydra.run.dir="]),
    ("posterior_diagnostics", "sweep", "RunKindError", ["is a sweep directory", "/sweep/0"]),
    ("transfer", "unfinished", "RunKindError", ["holds a run of `python -m experiments.analyze`"]),
    ("layer_maps", "missing", "FileNotFoundError", ["is not a directory", "experiment=tiny"]),
]  # fmt: skip


@pytest.mark.slow  # two tiny CLI runs, then a Jupyter kernel per case
@pytest.mark.parametrize(
    ("notebook", "run", "ename", "phrases"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES]
)
def test_a_notebook_pointed_at_the_wrong_run_says_what_it_needs(runs, notebook, run, ename, phrases):
    errors = _execute(notebook, runs / run)
    assert [len(e) for e in errors][:1] == [1] and not any(errors[1:]), "one error, in the first cell"
    (error,) = errors[0]
    assert error["ename"] == ename
    message = error["evalue"]
    assert "\n" not in message  # one line
    for phrase in phrases:
        assert phrase in message, message


@pytest.mark.slow
def test_the_readers_accept_the_right_run(runs):
    from dpmodels.transfer.outputs import TransferRun

    assert require_run(runs / "analyze", "analyze") == "analyze"
    assert RunOutputs(runs / "analyze").layers
    tr = TransferRun(runs / "transfer")
    assert tr.kind == "transfer" and len(tr.table) == 4 and tr.figures
    with pytest.raises(RunKindError, match="needs a run of `python -m experiments.analyze`"):
        RunOutputs(runs / "transfer")


def test_no_run_at_all_names_the_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="no finished one under outputs/analyze; make one with "
                       "`python -m experiments.analyze experiment=tiny`"):  # fmt: skip
        find_run("analyze")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no run"):
        require_run(tmp_path / "empty", "analyze", "RunOutputs")
    record = {"config": {"scenario": {"name": "noise"}, "net": None}, "overrides": ["scenario=noise"]}
    (tmp_path / "empty" / "run_started.json").write_text(json.dumps(record))
    with pytest.raises(RunKindError, match="holds a run of `python -m experiments.transfer`"):
        require_run(tmp_path / "empty", "analyze", "RunOutputs")
