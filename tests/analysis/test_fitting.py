import numpy as np
import pytest
import torch

from dpmodels.activations import LayerActivations, LayerGeometry
from dpmodels.analysis.fitting import fit_layers, split_positions
from dpmodels.data import PlantedMixture


def _layer(
    name: str, k: int, D: int, side: int, images: int, seed: int
) -> tuple[LayerActivations, np.ndarray]:
    N = images * side * side
    X, z = PlantedMixture(k, D, "diag", separation=8.0, imbalance=1.0, seed=seed).sample(N)
    i, y, x = np.unravel_index(np.arange(N), (images, side, side))
    geom = LayerGeometry((side, side), (4 * side, 4 * side), (4.0, 4.0), (1.5, 1.5), (6, 6))
    index = torch.from_numpy(np.stack([i, y, x], 1)).long()
    return LayerActivations(name, torch.as_tensor(X, dtype=torch.float32), index, geom, images), z


def test_split_positions_disjoint_and_sized():
    fit, held = split_positions(1000, 600, 300, np.random.default_rng(0))
    assert len(fit) == 600 and len(held) == 200  # held-out capped at a fifth
    assert not set(fit) & set(held)
    assert np.all(np.diff(fit) > 0)


@pytest.mark.parametrize("seed", [0, 1])
def test_fit_layers_batches_layers_of_equal_dimension_and_recovers_clusters(seed):
    a, _ = _layer("block1", 3, 4, 16, 8, seed)  # N = 2048
    b, _ = _layer("block2", 5, 4, 8, 8, seed + 10)  # N = 512: sets the common N
    c, _ = _layer("raw", 2, 6, 8, 8, seed + 20)  # another D: its own batched call
    fits = fit_layers(
        {"block1": a, "block2": b, "raw": c}, fit_points=1000, heldout_points=200, seed=seed, truncation=12
    )
    assert list(fits) == ["block1", "block2", "raw"]
    assert fits["block1"].batch_layers == ("block1", "block2") and fits["raw"].batch_layers == ("raw",)
    n_fit = len(fits["block2"].fit_index)
    assert len(fits["block1"].fit_index) == n_fit  # common N for batching
    assert [f.model.n_active_ for f in fits.values()] == [3, 5, 2]
    for f in fits.values():
        assert np.isfinite(f.heldout_loglik)
        assert not set(f.fit_index) & set(f.heldout_index)


def test_fit_layers_is_deterministic_and_rejects_empty_input():
    a, _ = _layer("l", 3, 3, 8, 4, 0)
    one = fit_layers({"l": a}, fit_points=200, heldout_points=50, seed=3, truncation=8)["l"]
    two = fit_layers({"l": a}, fit_points=200, heldout_points=50, seed=3, truncation=8)["l"]
    np.testing.assert_array_equal(one.fit_index, two.fit_index)
    np.testing.assert_array_equal(one.model.means_, two.model.means_)
    with pytest.raises(ValueError, match="matched nothing"):
        fit_layers({})
