"""The ImageNet-network transfer study (protocol P18): targets, the instrument check, correlations,
and the command line writing its table, correlations (CKA among them) and figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from dpmodels.transfer import pretrained as pt

ROOT = Path(__file__).resolve().parents[2]


def test_bundled_crops_are_seeded_labelled_rgb_crops_of_their_sources():
    a = pt.bundled_crops(["brick", "immunohistochemistry"], 3, 64, seed=1)
    b = pt.bundled_crops(["brick", "immunohistochemistry"], 3, 64, seed=1)
    c = pt.bundled_crops(["brick", "immunohistochemistry"], 3, 64, seed=2)
    assert a.images.shape == (6, 3, 64, 64) and torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    assert sorted(a.targets.tolist()) == [0, 0, 0, 1, 1, 1]
    grey = a.images[a.targets == 0]  # brick is a grey photo: replicated channels
    assert torch.equal(grey[:, 0], grey[:, 1])
    colour = a.images[a.targets == 1]
    assert not torch.equal(colour[:, 0], colour[:, 2])


@pytest.mark.parametrize("name", sorted(pt.TARGETS))
def test_targets_give_balanced_labelled_rgb_sets(name):
    images = pt.TARGETS[name](2, 32, 0)
    counts = torch.bincount(images.targets)
    assert images.channels == 3 and images.size == (32, 32)
    assert (counts == 2).all() and len(counts) >= 4


def test_instrument_check_compares_the_layer_range_with_the_seed_sd():
    rows = []
    for target, spread in (("flat", 0.01), ("steep", 0.3), ("steeper", 0.5)):
        for i, layer in enumerate(["a", "b", "c"]):
            for s in range(3):
                rows.append(
                    {"target": target, "layer": layer, "seed": s, "accuracy": 0.4 + spread * i / 2 + 0.01 * s}
                )
    check = pt.instrument_check(pt.summarise_transfer(pd.DataFrame(rows)))
    assert check["passed"]
    assert check["targets"]["flat"]["ratio"] < 3 < check["targets"]["steep"]["ratio"]
    only_one = pt.instrument_check(
        pt.summarise_transfer(pd.DataFrame([r for r in rows if r["target"] != "steeper"]))
    )
    assert not only_one["passed"]
    saturated = pd.DataFrame([{**r, "accuracy": 1.0} for r in rows if r["target"] != "flat"])
    check = pt.instrument_check(pt.summarise_transfer(saturated))  # every layer at ceiling, no spread
    assert not check["passed"] and check["targets"]["steep"]["saturated"]


def test_correlations_use_every_pair_and_flag_undefined_predictors():
    rng = np.random.default_rng(0)
    acc = rng.random(12)
    table = pd.DataFrame({"accuracy": acc, "k_hat": acc * 10 + 1, "cka": -acc, "entropy": np.ones(12)})
    corr = pt.predictor_correlations(table, n_boot=200)
    assert corr["k_hat"]["rho"] == pytest.approx(1.0) and corr["cka"]["rho"] == pytest.approx(-1.0)
    assert corr["k_hat"]["n"] == 12
    assert np.isnan(corr["entropy"]["rho"])  # a constant predictor has no rank correlation


@pytest.mark.slow
def test_command_line_writes_table_correlations_with_cka_and_figure(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DPMODELS_CACHE": str(tmp_path / "cache")}
    run_dir = tmp_path / "run"
    args = [
        "net=efficientnet_lite0", f"hydra.run.dir={run_dir}", "pretrained.targets=[digits,real_textures]",
        "pretrained.seeds=[0,1]", "pretrained.shots=3", "pretrained.test_per_class=4", "pretrained.pool_per_class=6",
        "pretrained.fit_points=800", "pretrained.heldout_points=300", "pretrained.source_images=60",
        "pretrained.n_boot=100", "pretrained.size=96",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "experiments.transfer", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(pt.PREDICTORS) <= set(metrics["correlations"]) and "cka" in metrics["correlations"]
    for entry in metrics["correlations"].values():
        assert set(entry) == {"rho", "ci", "n"} and len(entry["ci"]) == 2
    table = pd.read_csv(run_dir / "transfer_table.csv")
    assert len(table) == 2 * len(metrics["layers"])  # layers x targets
    assert {"accuracy", "accuracy_sd", "ci_low", "ci_high", *pt.PREDICTORS} <= set(table.columns)
    assert (run_dir / "figures" / "predictor_vs_transfer.png").stat().st_size > 5000
    assert "Spearman rho" in (run_dir / "summary.md").read_text()


def test_small_cnn_is_refused_as_a_pretrained_network(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "DPMODELS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "experiments.transfer", "net=small_cnn", f"hydra.run.dir={tmp_path / 'r'}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 1 and "pretrained transfer study takes a network as loaded" in proc.stderr
    assert "Traceback" not in proc.stderr
