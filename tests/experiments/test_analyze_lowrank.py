"""The main job with low-rank components (``infer.covariance=lowrank``): the config option, the
rank passed to the estimator, bad ranks refused before any work, and a tiny run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from experiments.analyze import check_rank
from experiments.builders import dpgmm_kwargs
from experiments.schema import register

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "conf"
TINY = ["experiment=tiny", "viz.num_images=1", "threads=1"]  # one thread: the fits are tiny


def _compose(overrides):
    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("analyze", overrides=overrides)


def _cli(args, tmp_path):
    env = {**os.environ, "DPMODELS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    env.pop("DPMODELS_TRACEBACK", None)
    return subprocess.run(
        [sys.executable, "-m", "experiments.analyze", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_lowrank_option_composes_and_passes_the_rank():
    cfg = _compose(["infer=natural_lowrank"])
    assert cfg.infer.covariance == "lowrank" and cfg.infer.rank is None
    kwargs = dpgmm_kwargs(cfg.prior, cfg.infer)
    assert kwargs["covariance"] == "lowrank" and kwargs["rank"] is None
    cfg = _compose(["experiment=tiny", "infer.covariance=lowrank", "infer.rank=3"])
    assert dpgmm_kwargs(cfg.prior, cfg.infer)["rank"] == 3
    check_rank(cfg.infer, cfg.layers)  # 3 < layers.pca_dim = 4: accepted
    assert dpgmm_kwargs(_compose([]).prior, _compose([]).infer)["rank"] is None  # default: full, unused


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["infer.rank=0"], "infer.rank=0 but infer.covariance=lowrank needs at least one factor"),
        (["infer.rank=4"], "infer.rank=4 but layers.pca_dim=4"),  # D <= pca_dim = 4
        (["infer.rank=17", "layers.pca_dim=16"], "use infer.rank<=15"),
    ],
)
def test_bad_ranks_are_refused_by_name(overrides, message):
    cfg = _compose(["experiment=tiny", "infer.covariance=lowrank", *overrides])
    with pytest.raises(ValueError, match=message):
        check_rank(cfg.infer, cfg.layers)


def test_rank_is_not_checked_for_the_other_types():
    cfg = _compose(["experiment=tiny", "infer.rank=0"])  # covariance=full ignores rank
    check_rank(cfg.infer, cfg.layers)


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_a_bad_rank_stops_the_job_before_any_work(tmp_path):
    proc = _cli(
        [*TINY, "infer.covariance=lowrank", "infer.rank=4", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path
    )
    assert proc.returncode != 0
    assert "infer.rank=4 but layers.pca_dim=4" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # no network was trained
    assert not (tmp_path / "run" / "run_started.json").exists()


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_tiny_lowrank_run_writes_every_output(tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli([*TINY, "infer.covariance=lowrank", "infer.rank=2", f"hydra.run.dir={run_dir}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    layers = metrics["layers"]
    assert list(layers) == ["block1.relu", "block2.relu"]
    for row in layers.values():
        assert row["covariance"] == "lowrank" and row["rank"] == 2 and row["num_features"] == 4
        assert 1 <= row["n_active"] <= 10 and row["posterior_draws"] == 8
        for key in ("elbo", "heldout_loglik", "ari", "nmi", "mean_entropy", "mean_epistemic", "concepts"):
            assert key in row
    assert (run_dir / "summary.md").read_text().startswith("# dpmodels analysis")
    assert (run_dir / "run_complete.json").exists()
    for name in ("layers_00.png", "clusters.png", "transitions.png", "prototypes_block1.relu.png"):
        assert (run_dir / "figures" / name).stat().st_size > 1000
    assert (run_dir / "figures" / "concepts_block1.relu.png").stat().st_size > 1000
    from dpmodels.analysis import RunOutputs
    from dpmodels.diagnostics import load_inference_data, summarize

    run = RunOutputs(run_dir)
    maps = run.maps("block2.relu")
    assert maps.labels.shape[0] == 6
    idata = load_inference_data(run.posterior_path("block1.relu"))
    assert {"posterior", "log_likelihood"} <= set(idata.groups())
    post = idata.posterior
    assert post.attrs["covariance"] == "lowrank" and post.attrs["rank"] == 2
    assert post["loadings"].dims[2:] == ("component", "feature", "factor")
    assert post["loadings"].shape[2:] == (10, 4, 2)
    assert len(summarize(idata)) > 0
