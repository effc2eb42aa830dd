"""The main job's library side with low-rank components: a rank too large for a layer is refused
before any fit; the rank is resolved per layer, recorded, and sizes the posterior's draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpmodels import DPGMM
from dpmodels.activations import LayerActivations, LayerGeometry
from dpmodels.analysis.fitting import fit_layers
from dpmodels.analysis.run import fitted_rank, posterior_draws
from dpmodels.data import PlantedMixture
from dpmodels.diagnostics import to_inference_data
from dpmodels.diagnostics.inference_data import estimate_bytes


def _layer(name: str, D: int, side: int = 8, images: int = 6, seed: int = 0) -> LayerActivations:
    N = images * side * side
    X, _ = PlantedMixture(3, D, "full", separation=8.0, imbalance=1.0, seed=seed).sample(N)
    i, y, x = np.unravel_index(np.arange(N), (images, side, side))
    geom = LayerGeometry((side, side), (4 * side, 4 * side), (4.0, 4.0), (1.5, 1.5), (6, 6))
    index = torch.from_numpy(np.stack([i, y, x], 1)).long()
    return LayerActivations(name, torch.as_tensor(X, dtype=torch.float32), index, geom, images)


@pytest.fixture()
def single_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small fits: far faster on one thread than on two busy ones
    yield
    torch.set_num_threads(threads)


def test_a_rank_too_large_for_a_layer_is_refused_before_any_fit(tmp_path):
    acts = {"wide": _layer("wide", 8), "narrow": _layer("narrow", 3)}
    with pytest.raises(ValueError, match=r"rank=3 .*'narrow': 3.*infer\.rank"):
        fit_layers(acts, covariance="lowrank", rank=3, truncation=6, checkpoint_dir=tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()  # nothing was fitted


def test_rank_none_resolves_per_layer_and_sizes_the_draws(single_thread):
    acts = {"wide": _layer("wide", 8), "narrow": _layer("narrow", 3, seed=1)}
    fits = fit_layers(
        acts, fit_points=300, heldout_points=60, covariance="lowrank", truncation=6, max_iter=60
    )
    assert fitted_rank(fits["wide"].model) == 7 and fitted_rank(fits["narrow"].model) == 2  # min(16, D - 1)
    model = fits["wide"].model
    assert fitted_rank(DPGMM(truncation=4).fit(np.random.default_rng(0).normal(size=(50, 3)))) is None
    budget = estimate_bytes(1, 5, 6, 8, 300, "lowrank", False, 7)  # room for exactly 5 draws
    assert budget > estimate_bytes(1, 5, 6, 8, 300, "diag", False)
    draws = posterior_draws(model, 64, 300, max_bytes=budget)
    assert draws == 5
    points = acts["wide"].tensor()[torch.from_numpy(fits["wide"].fit_index)].numpy()
    idata = to_inference_data(model, points, num_draws=draws, max_points=300, max_bytes=budget)
    assert idata.posterior["loadings"].shape == (1, 5, 6, 8, 7)
