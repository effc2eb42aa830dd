"""Texture-energy pooling: local means of activation maps, their geometry, and extraction with it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dpmodels.activations import LayerGeometry, extract
from dpmodels.activations.smooth import check_smooth, smooth_geometry, smooth_maps


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(5, 4, 3, padding=1), nn.ReLU()
    )


def test_interior_and_border_means_by_hand():
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(2, 3, 7, 6, generator=g)
    out = smooth_maps(maps, 3)
    assert out.shape == maps.shape
    torch.testing.assert_close(out[1, 2, 3, 4], maps[1, 2, 2:5, 3:6].mean())
    torch.testing.assert_close(out[0, 1, 0, 0], maps[0, 1, 0:2, 0:2].mean())  # only in-map positions
    torch.testing.assert_close(out[0, 0, 6, 2], maps[0, 0, 5:7, 1:4].mean())
    five = smooth_maps(maps, 5)
    torch.testing.assert_close(five[0, 0, 3, 3], maps[0, 0, 1:6, 1:6].mean())


def test_constant_regions_stay_constant_and_images_do_not_mix():
    maps = torch.zeros(2, 1, 8, 8)
    maps[0] = 2.0
    maps[1, :, :, 4:] = 1.0
    out = smooth_maps(maps, 5)
    assert torch.all(out[0] == 2.0)  # border means do not shrink towards zero
    assert torch.all(out[1, :, :, :2] == 0.0) and torch.all(out[1, :, :, -2:] == 1.0)
    torch.testing.assert_close(out[1, 0, 4, 3], torch.tensor(0.4))  # 2 of 5 columns are ones
    torch.testing.assert_close(smooth_maps(maps[:1], 5), out[:1])  # batch-independent


@pytest.mark.parametrize("bad", [0, 2, 4, -3, 2.0, True, "3"])
def test_bad_windows_are_rejected(bad):
    with pytest.raises(ValueError, match="odd positive int"):
        check_smooth(bad)


def test_window_one_is_no_pooling():
    assert check_smooth(1) is None and check_smooth(None) is None
    maps = torch.rand(1, 2, 4, 4)
    assert smooth_maps(maps, 1) is maps


def test_geometry_receptive_field_grows_centres_stay():
    geom = LayerGeometry((16, 16), (64, 64), (4.0, 4.0), (1.5, 1.5), (10, 10))
    g5 = smooth_geometry(geom, 5)
    assert g5.receptive_field == (26, 26)
    assert (g5.stride, g5.offset, g5.map_size) == (geom.stride, geom.offset, geom.map_size)
    assert smooth_geometry(geom, None) is geom


def test_extract_smooths_each_layer_map_before_taking_positions():
    net = _net()
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    raw = extract(net, x, ["2", "4"], progress=False)
    sm = extract(net, x, ["2", "4"], smooth=3, progress=False, batch_size=2)
    for name in ("2", "4"):
        a, b = raw[name], sm[name]
        torch.testing.assert_close(b.index, a.index)
        expected = smooth_maps(a.to_maps(a.points.T.reshape(a.num_features, -1).T[:, 0]).unsqueeze(1), 3)
        torch.testing.assert_close(b.to_maps(b.points[:, 0]), expected[:, 0])
        ry, rx = a.geometry.receptive_field
        sy, sx = a.geometry.stride
        assert b.geometry.receptive_field == (round(ry + 2 * sy), round(rx + 2 * sx))
        assert b.meta["smooth"] == 3 and a.meta["smooth"] is None
        assert b.meta["unsmoothed_receptive_field"] == [ry, rx]
    # positions inside one uniform region no longer vary with the pattern's phase
    assert sm["4"].points.var(0).sum() < raw["4"].points.var(0).sum()


def test_extract_rejects_even_window():
    with pytest.raises(ValueError, match="smooth"):
        extract(_net(), torch.rand(1, 3, 8, 8), ["2"], smooth=2, progress=False)
