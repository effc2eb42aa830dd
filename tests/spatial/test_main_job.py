"""The spatial model in the main job: whole-image fit sets, coupled maps, metrics, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dpmodels.analysis.fitting import layer_rng, split_images
from dpmodels.spatial import grid_from_index
from tests.experiments.test_analyze import TINY, _cli


def _index(images: int, h: int, w: int) -> np.ndarray:
    return np.stack(np.meshgrid(np.arange(images), np.arange(h), np.arange(w), indexing="ij"), -1).reshape(
        -1, 3
    )


def test_whole_images_fit_and_disjoint_heldout():
    index = _index(5, 6, 7)  # 42 positions per image
    fit, held = split_images(index, fit_points=100, heldout_points=30, rng=layer_rng(0, "a"))
    images = np.unique(index[fit, 0])
    assert len(images) == 2 and len(fit) == 84  # two whole images fit in 100
    assert len(np.intersect1d(fit, held)) == 0 and len(held) == 30
    # every fit position keeps all its in-image neighbours
    grid = grid_from_index(index[fit])
    inner = (index[fit, 1] > 0) & (index[fit, 1] < 5) & (index[fit, 2] > 0) & (index[fit, 2] < 6)
    assert bool((grid.neighbours[inner] >= 0).all())
    # the split is a function of the seed and the layer name
    again = split_images(index, 100, 30, layer_rng(0, "a"))
    np.testing.assert_array_equal(fit, again[0])


def test_one_large_image_gives_whole_rows():
    index = _index(1, 10, 10)
    fit, held = split_images(index, fit_points=35, heldout_points=20, rng=layer_rng(0, "b"))
    assert len(fit) == 30 and set(index[fit, 1]) == {0, 1, 2}  # three whole rows
    assert len(held) == 20


@pytest.fixture(scope="module")
def spatial_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spatial")
    run_dir = tmp / "run"
    _cli([*TINY, "model=spatial", f"hydra.run.dir={run_dir}"], tmp)
    return tmp, run_dir


@pytest.mark.slow  # a subprocess CLI run (tier: pytest -m 'not slow' skips it)
def test_spatial_main_job_writes_coupled_results(spatial_run):
    _, run_dir = spatial_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for row in metrics["layers"].values():
        assert row["coupling"] == 1.0 and row["coupled_seconds"] > 0
        assert 0 <= row["nmi"] <= 1 and "concepts" in row
    from dpmodels.analysis import RunOutputs

    run = RunOutputs(run_dir)
    assert run.config["model"]["coupling"] == 1.0
    maps = run.maps("block1.relu")
    assert maps.meta["coupling"] == 1.0
    assert maps.labels.shape[0] == 6 and int(maps.labels.min()) >= 0
    assert (run_dir / "figures" / "layers_00.png").stat().st_size > 1000
    assert "Potts coupling β = 1" in (run_dir / "summary.md").read_text()
