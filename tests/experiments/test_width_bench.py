"""The width benchmark preset: composes, runs its quick version, writes one table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from experiments.bench.engines import BenchmarkSettings
from experiments.bench.width import WIDTH_FIELDS, format_width_table, plan_cases
from experiments.benchmark import run  # registers the config schema

CONF = Path(__file__).resolve().parents[2] / "conf"


def compose_width(overrides: list[str]) -> BenchmarkSettings:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_object(compose(config_name="benchmark", overrides=["preset=width", *overrides]))


def test_width_preset_covers_the_issue_grid():
    settings = compose_width([])
    w = settings.width
    assert w.enabled and w.dims == [32, 64, 128, 256, 512] and w.truncation == 50 and w.n_clusters == 10
    cases = plan_cases(w)
    assert {c["data"] for c in cases} == {"gaussian", "relu", "factor"} and len(cases) == 3 * 5 * 3
    assert {c["covariance"] for c in cases} == {"diag", "lowrank", "full"} and w.rank == 16
    full64 = [c for c in cases if c["covariance"] == "full" and c["D"] == 64]
    assert all(c["N"] == 20_000 for c in full64)
    assert all(c["N"] == 50_000 for c in cases if c["D"] == 128)
    with pytest.raises(ValueError, match="covariances must come from"):
        plan_cases(compose_width(["width.covariances=[tied]"]).width)
    with pytest.raises(ValueError, match="width.rank=16"):
        plan_cases(compose_width(["width.dims=[8,32]"]).width)


@pytest.mark.slow  # a quick width benchmark run, ~1 min
def test_quick_width_run_writes_one_table(tmp_path):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            config_name="benchmark",
            overrides=[
                "preset=width",
                "width.quick=true",
                "width.dims=[6]",
                "width.data=[gaussian,factor]",
                "threads=1",
            ],
        )
    rows = run(cfg, tmp_path)
    per_data = [
        ("diag", "dpmodels"),
        ("diag", "sklearn"),
        ("lowrank", "dpmodels"),
        ("full", "dpmodels"),
        ("full", "sklearn"),
    ]
    assert [(r["covariance"], r["method"]) for r in rows] == per_data * 2
    assert [r["data"] for r in rows] == ["gaussian"] * 5 + ["factor"] * 5
    for row in rows:
        assert row["error"] is None, row["error"]
        assert row["capped"] or (row["wall_seconds"] > 0 and 0.0 <= row["ari"] <= 1.0 and row["k_hat"] >= 1)
    assert rows[0]["ari"] > 0.9 and rows[0]["speedup_vs_sklearn"] is not None
    with open(tmp_path / "width.csv", newline="") as f:
        assert tuple(csv.DictReader(f).fieldnames) == WIDTH_FIELDS
    assert "x sklearn" in format_width_table(rows) and (tmp_path / "width.json").is_file()
