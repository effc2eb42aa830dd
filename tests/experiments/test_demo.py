"""The demo entry point: composed with Hydra in-process, and from the command line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from experiments.demo import run

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "data.n_points=600",
    "data.n_features=3",
    "data.n_clusters=3",
    "model.truncation=8",
    "model.progress=false",
]


def test_demo_composes_and_writes_its_report(tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="demo", overrides=TINY)
    metrics = run(cfg, tmp_path)
    assert metrics["n_active"] == 3
    assert json.loads((tmp_path / "metrics.json").read_text())["ari"] > 0.9
    assert (tmp_path / "figures" / "projection.png").stat().st_size > 1000
    assert "| n_active | 3 |" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_demo_cli(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.demo", f"hydra.run.dir={out}", *TINY],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text())["n_planted"] == 3


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_demo_rejects_a_bad_override(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.demo",
            f"hydra.run.dir={tmp_path}",
            "model.prior=gem",
            *TINY[:-1],
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "prior must be one of" in proc.stderr
