"""The scaling benchmark preset: composes, runs its quick version on 1 and 2 processes, writes one table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.benchmark import run  # registers the config schema

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_scaling(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="benchmark", overrides=["preset=scaling", *overrides])


def test_scaling_preset_is_the_issue_setting():
    s = OmegaConf.to_object(compose_scaling([])).scaling
    assert s.enabled and s.processes == [1, 2] and s.n_points == 1_000_000 and s.n_features == 32
    assert s.covariance == "full" and s.backend == "gloo"


@pytest.mark.slow
def test_quick_scaling_run_compares_two_processes_with_one(tmp_path):
    rows = run(compose_scaling(["scaling.quick=true", "threads=2"]), tmp_path)
    assert [(r["processes"], r["rank"]) for r in rows] == [(1, 0), (2, 0), (2, 1)]
    assert all(r["error"] is None for r in rows)
    assert (
        rows[0]["reduce_calls"] == 0 and rows[1]["reduce_calls"] > 0 and rows[1]["largest_reduce_bytes"] > 0
    )
    assert rows[1]["shard_points"] + rows[2]["shard_points"] == rows[0]["shard_points"]
    report = json.loads((tmp_path / "scaling.json").read_text())
    (cmp,) = report["comparison"]
    assert cmp["processes"] == 2 and cmp["same_n_active"] and cmp["ari"] == 1.0 and cmp["ranks_identical"]
    assert cmp["heldout_diff"] < 1e-4 and cmp["elbo_per_point_diff"] < 1e-4
    assert report["cost_model"]["largest_reduce_bytes"] == cmp["largest_reduce_bytes"]
    with open(tmp_path / "scaling.csv") as f:
        assert len(list(csv.DictReader(f))) == 3


def test_bad_process_counts_are_refused(tmp_path):
    with pytest.raises(ValueError, match="process counts >= 1"):
        run(compose_scaling(["scaling.quick=true", "scaling.processes=[0]"]), tmp_path)
