"""The main job on its default, the ImageNet-trained EfficientNet-Lite0 on real-texture mosaics
(shrunk), and the seed paper's experiment with its random-weight control and figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["data.num_images=2", "data.size=96", "infer.fit_points=1200", "infer.heldout_points=300",
         "infer.num_draws=8", "infer.map_draws=4", "infer.progress=false", "viz.num_images=1", "viz.prototypes=2"]  # fmt: skip


def _cli(args, tmp_path):
    env = {**os.environ, "DPMODELS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "experiments.analyze", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_default_main_job_analyses_the_pretrained_stages_and_records_preprocessing(tmp_path):
    run = tmp_path / "run"
    _cli([*SMALL, f"hydra.run.dir={run}"], tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics["layers"]) == ["stage1", "stage2", "stage3", "stage5", "stage7"]
    net = metrics["network"]
    assert net["name"] == "efficientnet_lite0" and net["weights"] == "DEFAULT"
    assert net["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and net["preprocessing"]["size"] == 224
    assert all(0 <= row["nmi"] <= 1 for row in metrics["layers"].values())  # masks: evaluated


@pytest.mark.slow
def test_seed_paper_experiment_writes_trained_and_control_runs_and_the_figure(tmp_path):
    run = tmp_path / "run"
    _cli(["experiment=seed_paper", "data.size=128", *SMALL[2:], f"hydra.run.dir={run}"], tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    control = json.loads((run / "control" / "metrics.json").read_text())
    assert metrics["network"]["weights"] == "DEFAULT" and control["network"]["weights"].startswith("random")
    assert list(metrics["layers"]) == list(control["layers"])
    for row in metrics["layers"].values():
        low, high = row["n_active_interval"]
        assert 1 <= low <= high <= 30  # K's 90 % posterior interval, within the truncation
    assert (run / "figures" / "seed_paper.png").stat().st_size > 10_000
    assert (run / "control" / "maps").is_dir()
