"""Cluster and uncertainty maps of a real conv layer, at map and input resolution."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from dpmodels import DPGMM
from dpmodels.activations import LayerActivations, LayerGeometry
from dpmodels.maps import MAP_KINDS, layer_maps, point_uncertainty


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


def planted_iou(maps, masks, geometry=None) -> float:
    if geometry is not None:
        maps = dataclasses.replace(maps, geometry=geometry)
    labels = maps.at_input("labels")
    # the planted region: pixels of clusters whose pixels lie mostly inside the square
    inside = [k for k in labels.unique().tolist() if (masks[labels == k] == 1).float().mean() > 0.5]
    return iou(torch.isin(labels, torch.tensor(inside)), masks == 1)


def test_planted_square_is_recovered_at_input_resolution(planted):
    images, masks, acts, model = planted
    maps = layer_maps(model, acts, num_draws=8)
    assert maps.labels.shape == (12, 16, 16) and maps.at_input("labels").shape == (12, 32, 32)
    good = planted_iou(maps, masks)
    assert good > 0.75
    g = acts.geometry  # the same maps placed with a wrong offset (3 px down/right) align worse
    shifted = LayerGeometry(g.map_size, g.input_size, g.stride, (3.5, 3.5), g.receptive_field)
    assert planted_iou(maps, masks, shifted) < good - 0.1


def test_maps_are_nonnegative_bounded_and_consistent(planted):
    _, _, acts, model = planted
    maps = layer_maps(model, acts, num_draws=8, seed=1)
    K = maps.weights.shape[0]
    for kind in ("entropy", "epistemic", "aleatoric"):
        v = maps.get(kind)
        assert torch.isfinite(v).all() and (v >= 0).all() and (v <= np.log(K) + 1e-9).all()
    total = maps.epistemic + maps.aleatoric  # H[E_theta p] >= MI
    assert (maps.epistemic <= total + 1e-12).all()
    assert ((maps.confidence > 0) & (maps.confidence <= 1 + 1e-9)).all()
    assert torch.equal(maps.labels.flatten(), torch.as_tensor(model.predict(acts.points)))
    assert (maps.labels < maps.weights.shape[0]).all() and maps.n_active == model.n_active_
    novelty = -torch.as_tensor(model.score_samples(acts.points), dtype=torch.float64)
    assert torch.allclose(maps.novelty.flatten(), novelty, rtol=1e-5, atol=1e-4)
    per_dim = layer_maps(model, acts, num_draws=2, per_dimension=True)
    assert torch.allclose(per_dim.novelty * acts.num_features, maps.novelty, rtol=1e-6, atol=1e-6)
    again = layer_maps(model, acts, num_draws=8, seed=1, chunk_size=333)
    for kind in MAP_KINDS:
        assert torch.allclose(again.get(kind).double(), maps.get(kind).double(), atol=1e-9)


def test_memmap_points_and_missing_positions(planted, tmp_path):
    _, _, acts, model = planted
    keep = torch.arange(acts.num_points) % 3 != 0  # a subsample of positions
    path = tmp_path / "points.npy"
    np.save(path, acts.points[keep].numpy())
    sub = dataclasses.replace(acts, points=np.load(path, mmap_mode="r"), index=acts.index[keep])
    maps = layer_maps(model, sub, num_draws=4, chunk_size=500)
    ref = layer_maps(model, acts, num_draws=4)
    assert int((maps.labels == -1).sum()) == int((~keep).sum())
    assert torch.isnan(maps.entropy).sum() == (~keep).sum()
    i, y, x = sub.index.unbind(1)
    assert torch.allclose(maps.epistemic[i, y, x], ref.epistemic[i, y, x], atol=1e-9)
    up, nearest = maps.at_input("entropy"), maps.at_input("labels")
    assert torch.isfinite(up[nearest >= 0]).all()
    assert torch.isfinite(up[nearest == -1]).float().mean() > 0.9  # bridged by valid neighbours


def blobs(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])
    return centres[torch.arange(n) % 2] + 0.8 * torch.randn(n, 2, generator=g)


def test_epistemic_shrinks_as_data_grows():
    grid = torch.stack(torch.meshgrid(torch.linspace(-3, 3, 15), torch.linspace(-2, 2, 9), indexing="ij"), -1)
    grid = grid.reshape(-1, 2)
    means = []
    for n in (40, 4000):
        post = DPGMM(truncation=6, seed=0).fit(blobs(n, seed=n)).posterior_
        means.append(float(point_uncertainty(post, grid, num_draws=64)["epistemic"].mean()))
    assert means[1] < 0.3 * means[0]


def test_novelty_is_higher_for_outliers():
    post = DPGMM(truncation=6, seed=0).fit(blobs(600, seed=1)).posterior_
    inliers = blobs(50, seed=2)
    outliers = torch.tensor([[0.0, 8.0], [9.0, 9.0], [-10.0, 3.0]])
    nov = point_uncertainty(post, torch.cat([inliers, outliers]), num_draws=4)["novelty"]
    assert nov[-3:].min() > nov[:-3].max()


def test_diagonal_covariance_maps():
    x = blobs(400, seed=5)
    post = DPGMM(truncation=5, covariance="diag", seed=0).fit(x).posterior_
    out = point_uncertainty(post, x, num_draws=8)
    assert (out["epistemic"] >= 0).all() and (out["entropy"] >= 0).all()
    assert torch.equal(out["labels"], post.predict(x)[0])


def test_wrong_fits_and_sizes_raise(planted):
    _, _, acts, model = planted
    other = DPGMM(truncation=3, seed=0).fit(blobs(100, seed=0))  # fitted on 2-D points, layer is 6-D
    with pytest.raises(ValueError, match="6-dimensional points"):
        layer_maps(other, acts)
    with pytest.raises(ValueError, match="no fit for layer 'block1'"):
        layer_maps({"block2": model}, acts)
    with pytest.raises(ValueError, match="not fitted"):
        layer_maps(DPGMM(), acts)
    maps = layer_maps({"block1": model}, acts, num_draws=2)
    with pytest.raises(ValueError, match="image_size"):
        maps.at_input("entropy", image_size=(64, 64))
    assert maps.at_input("novelty", image_size=(32, 32)).shape == (12, 32, 32)
    with pytest.raises(ValueError, match="kind"):
        maps.get("colour")
    batched = model.fit_result_  # a B = 1 posterior is required
    assert batched is not None
    with pytest.raises(ValueError, match="num_draws"):
        point_uncertainty(model.posterior_, acts.points, num_draws=0)


def test_layer_activations_from_hand_built_geometry_roundtrip():
    g = LayerGeometry((2, 2), (4, 4), (2.0, 2.0), (0.5, 0.5), (2, 2))
    idx = torch.tensor([[0, 0, 0], [0, 1, 1]])
    acts = LayerActivations("l", torch.zeros(2, 1), idx, g, 1)
    assert acts.to_maps(torch.tensor([3, 4]))[0].tolist() == [[3, -1], [-1, 4]]
