import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

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
def test_fit_layers_fits_each_layer_on_its_own_points_and_recovers_clusters(seed):
    a, _ = _layer("block1", 3, 4, 16, 8, seed)  # N = 2048
    b, _ = _layer("block2", 5, 4, 8, 8, seed + 10)  # N = 512: sets the common N
    c, _ = _layer("raw", 2, 6, 8, 8, seed + 20)  # another D: its own batched call
    fits = fit_layers(
        {"block1": a, "block2": b, "raw": c}, fit_points=1000, heldout_points=200, seed=seed, truncation=12
    )
    assert list(fits) == ["block1", "block2", "raw"]
    assert fits["block1"].batch_layers == ("block1",) and fits["raw"].batch_layers == ("raw",)
    assert len(fits["block1"].fit_index) == 1000  # its own N, not the smaller layer's
    assert len(fits["block2"].fit_index) == 512 - 102
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


@pytest.fixture(scope="module")
def resnet18_64px():
    """resnet18 (random weights) on five 64 px texture mosaics: layers from 32 x 32 to 2 x 2 positions."""
    from torchvision.models import resnet18

    from dpmodels.activations import extract
    from dpmodels.data import skimage_texture_mosaics

    torch.manual_seed(0)
    images = skimage_texture_mosaics(("brick", "grass", "gravel", "coffee"), num_images=5, size=64, seed=0)
    net = resnet18(weights=None)
    layers = ["relu", "layer1", "layer2", "layer3", "layer4"]
    acts = extract(net, images, layers, pca_dim=8, progress=False, seed=0)
    return acts


@pytest.mark.slow  # resnet18 at 64 px, ~50 s
def test_each_layer_is_fitted_on_its_own_positions_and_batching_does_not_change_it(resnet18_64px):
    """Batching used to fit every layer on as many points as the smallest (20 for resnet18 at
    64 px): relu got K = 2 with the group instead of K = 9 alone."""
    acts = resnet18_64px
    kw = dict(fit_points=600, heldout_points=100, seed=0, truncation=30, covariance="diag", progress=False)
    group = fit_layers(acts, **kw)
    for name, a in acts.items():
        n_held = min(100, a.num_points // 5)
        assert len(group[name].fit_index) == min(600, a.num_points - n_held), name
        assert len(group[name].heldout_index) == n_held
    assert len(group["relu"].fit_index) == 600 > len(group["layer4"].fit_index)
    for name in ("relu", "layer1", "layer4"):
        alone = fit_layers({name: acts[name]}, **kw)[name]
        np.testing.assert_array_equal(alone.fit_index, group[name].fit_index)
        assert alone.model.n_active_ == group[name].model.n_active_
        np.testing.assert_allclose(alone.model.means_, group[name].model.means_, rtol=1e-5, atol=1e-6)
        points = acts[name].tensor().numpy()
        assert adjusted_rand_score(alone.model.predict(points), group[name].model.predict(points)) == 1.0


def test_layers_of_equal_shape_can_share_a_batched_call():
    a, za = _layer("a", 3, 4, 16, 4, 0)  # N = 1024 each, D = 4
    b, zb = _layer("b", 4, 4, 16, 4, 1)
    kw = dict(fit_points=500, heldout_points=100, seed=2, truncation=10, progress=False)
    own = fit_layers({"a": a, "b": b}, **kw)
    shared = fit_layers({"a": a, "b": b}, batch_equal_shapes=True, **kw)
    assert own["a"].batch_layers == ("a",) and shared["a"].batch_layers == ("a", "b")
    for name, acts, truth in (("a", a, za), ("b", b, zb)):
        np.testing.assert_array_equal(own[name].fit_index, shared[name].fit_index)
        assert own[name].model.n_active_ == shared[name].model.n_active_ == len(np.unique(truth))
        pts = acts.tensor().numpy()
        assert adjusted_rand_score(truth, shared[name].model.predict(pts)) > 0.99


def test_wide_layers_get_as_many_posterior_draws_as_fit_in_memory():
    from dpmodels import DPGMM
    from dpmodels.analysis.run import posterior_draws
    from dpmodels.diagnostics import to_inference_data
    from dpmodels.diagnostics.inference_data import estimate_bytes

    X = np.random.default_rng(0).normal(size=(300, 12))
    model = DPGMM(truncation=6, seed=0).fit(X)
    assert posterior_draws(model, 64, 300) == 64  # narrow: all requested draws
    budget = estimate_bytes(1, 10, 6, 12, 300, "full", False)  # room for exactly 10 draws
    draws = posterior_draws(model, 64, 300, max_bytes=budget)
    assert draws == 10
    idata = to_inference_data(model, X, num_draws=draws, max_points=300, max_bytes=budget)  # fits, no error
    assert idata.posterior.sizes["draw"] == 10
    assert posterior_draws(model, 64, 300, max_bytes=1) == 4  # never below 4 (InferenceData's minimum)
