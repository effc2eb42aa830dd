"""The main job with concepts: a tiny end-to-end run writes the concept block of every layer, the
concept figures and the summary columns."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpmodels.analysis.outputs import layer_file

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_concepts_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("concepts_run")
    run_dir = tmp / "run"
    env = {**os.environ, "DPMODELS_CACHE": str(tmp / "cache"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.analyze",
            "experiment=tiny",
            "viz.num_images=1",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_metrics_hold_the_concept_block_of_every_layer(tiny_concepts_run):
    metrics = json.loads((tiny_concepts_run / "metrics.json").read_text())
    assert metrics["layers"]
    for row in metrics["layers"].values():
        c = row["concepts"]
        for key in ("k", "k_interval", "ari", "nmi", "miou", "entropy_auroc", "ece", "ece_majority"):
            assert key in c, key
        assert 1 <= c["k"] <= c["k_components"]
        lo, hi = c["k_interval"]
        assert 1 <= lo <= hi <= c["k_components"]
        assert all(math.isfinite(c[k]) for k in ("ari", "nmi", "miou"))
        assert "bhattacharyya" in c["alternatives"] or c["criterion"] == "bhattacharyya"
    assert metrics["timings"]["concepts_seconds"] > 0
    figures = tiny_concepts_run / "figures"
    for name in metrics["layers"]:
        assert (figures / f"concepts_{layer_file(name)}.png").exists()
    assert (figures / "concept_layers_00.png").exists()
    summary = (tiny_concepts_run / "summary.md").read_text()
    assert "concept NMI" in summary and "ECE" in summary
