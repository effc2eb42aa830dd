"""importance=true on a network without a classifier head: the main job and apply refuse it in
one line before any extraction or fit (no fits/, no maps/ written)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADLESS = ["net=timm", "net.name=test_convnext", "net.weights=null", "+net.options.num_classes=0"]
SMALL = ["data=textures", "data.num_images=3", "data.size=32", "infer.fit_points=600", "infer.heldout_points=100",
         "infer.num_draws=4", "infer.map_draws=2", "infer.progress=false", "viz=none", "layers.pca_dim=4"]  # fmt: skip

pytestmark = [pytest.mark.slow]


def _cli(module, args, tmp_path):
    pytest.importorskip("timm")
    env = {**os.environ, "DPMODELS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("DPMODELS_TRACEBACK", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip


def _one_error_line(proc) -> str:
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


def test_main_job_refuses_importance_on_a_headless_network_before_the_fits(tmp_path):
    run = tmp_path / "run"
    proc = _cli(
        "experiments.analyze", [*SMALL, *HEADLESS, "importance=true", f"hydra.run.dir={run}"], tmp_path
    )
    line = _one_error_line(proc)
    assert "importance=true" in line and "no classifier head" in line and "num_classes=0" in line
    assert not list(run.rglob("fits")) and not list(run.rglob("*.pt")) and not list(run.rglob("maps"))
    assert "[dpmodels.analysis" not in proc.stderr  # the analysis (extraction, fits) never started
    assert not (run / "run_complete.json").exists()


def test_apply_refuses_importance_on_a_headless_network_before_extraction(tmp_path):
    ref = tmp_path / "ref"
    proc = _cli(
        "experiments.analyze",
        [*SMALL, *HEADLESS, "layers.names=[stages.1]", f"hydra.run.dir={ref}"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ref / "fits" / "stages.1.pt").is_file()  # the headless run itself is fine
    before = sorted(p.relative_to(ref) for p in ref.rglob("*"))
    out = tmp_path / "applied"
    proc = _cli(
        "experiments.apply", [f"run={ref}", *SMALL[:3], "importance=true", f"hydra.run.dir={out}"], tmp_path
    )
    line = _one_error_line(proc)
    assert "importance=true" in line and "no classifier head" in line
    assert not list(out.rglob("maps")) and not list(out.rglob("*.npz")) and not list(out.rglob("*.csv"))
    assert sorted(p.relative_to(ref) for p in ref.rglob("*")) == before  # the reference run untouched
