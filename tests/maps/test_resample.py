"""Resampling between map positions and input pixels honours stride and offset exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpmodels.activations import LayerGeometry
from dpmodels.maps import centre_pixels, mask_at_positions, upsample_map


def geom(map_size, input_size, stride, offset, rf=3):
    return LayerGeometry(tuple(map_size), tuple(input_size), (stride, stride), (offset, offset), (rf, rf))


def test_pool2x2_geometry_nearest_puts_each_cell_on_its_block():
    g = geom((4, 4), (8, 8), 2.0, 0.5)  # a 2x2 max-pool: position y covers pixels 2y, 2y+1
    maps = torch.arange(16).view(1, 4, 4)
    up = upsample_map(maps, g, "nearest")
    assert up.dtype == maps.dtype and up.shape == (1, 8, 8)
    expected = maps.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert torch.equal(up, expected)


def test_bilinear_lands_values_at_the_position_centres():
    g = geom((4, 5), (8, 10), 2.0, 0.5)
    rows = torch.arange(4, dtype=torch.float64).view(1, 4, 1).expand(1, 4, 5)
    up = upsample_map(rows, g, "bilinear")
    py = np.arange(8)
    expected = np.clip((py - 0.5) / 2.0, 0, 3)  # map coordinate of each pixel row, border-clamped
    np.testing.assert_allclose(up[0, :, 0].numpy(), expected, atol=1e-12)
    assert torch.allclose(up[0], up[0, :, :1].expand(8, 10))  # constant along x


def test_offset_zero_stride_two_differs_from_half_pixel_interpolation():
    g = geom((4, 4), (8, 8), 2.0, 0.0)  # conv k3 s2 p1: position y centred on pixel 2y
    cols = torch.tensor([0.0, 10.0, 20.0, 30.0]).view(1, 1, 4).expand(1, 4, 4)
    up = upsample_map(cols, g, "bilinear")[0, 0]
    np.testing.assert_allclose(up.numpy(), [0, 5, 10, 15, 20, 25, 30, 30])
    naive = torch.nn.functional.interpolate(cols[None], size=(8, 8), mode="bilinear", align_corners=False)
    assert not torch.allclose(naive[0, 0, 0].double(), up)  # the offset matters
    labels = upsample_map(torch.tensor([[[0, 1, 2, 3]]]).expand(1, 4, 4), g, "nearest")[0, 0]
    assert labels.tolist() == [0, 1, 1, 2, 2, 3, 3, 3]  # ties (pixel 2y+1) round up


def test_nan_positions_are_left_out_and_renormalised():
    g = geom((3, 3), (6, 6), 2.0, 0.5)
    maps = torch.ones(1, 3, 3, dtype=torch.float64) * 2.0
    maps[0, 1, 1] = float("nan")
    up = upsample_map(maps, g, "bilinear")
    assert torch.isfinite(up).all() and torch.allclose(up, torch.full_like(up, 2.0))
    all_nan = torch.full((1, 3, 3), float("nan"))
    assert torch.isnan(upsample_map(all_nan, g, "bilinear")).all()


def test_mask_at_positions_reads_centre_pixels():
    g = geom((4, 4), (8, 8), 2.0, 0.5)
    py, px = centre_pixels(g)
    assert py.tolist() == [1, 3, 5, 7]  # centre 0.5 lies between pixels 0 and 1: take the lower/right one
    masks = torch.arange(64).view(1, 8, 8)
    sampled = mask_at_positions(masks, g)
    assert sampled.shape == (1, 4, 4) and int(sampled[0, 1, 2]) == 3 * 8 + 5


def test_bad_inputs_raise_clear_errors():
    g = geom((4, 4), (8, 8), 2.0, 0.5)
    with pytest.raises(ValueError, match="H_l, W_l"):
        upsample_map(torch.zeros(1, 5, 4), g)
    with pytest.raises(ValueError, match="mode"):
        upsample_map(torch.zeros(1, 4, 4), g, "bicubic")
    with pytest.raises(ValueError, match="input size"):
        mask_at_positions(torch.zeros(1, 9, 8, dtype=torch.long), g)
