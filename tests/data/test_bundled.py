"""Images bundled with scikit-image: offline loading, whole images and texture mosaics."""

from __future__ import annotations

import pytest
import torch

from dpmodels.data import BUNDLED_IMAGES, load_bundled, skimage_images, skimage_texture_mosaics


@pytest.mark.parametrize("name", sorted(BUNDLED_IMAGES))
def test_every_bundled_image_loads_offline(name):
    x = load_bundled(name)
    assert x.dim() == 3 and x.shape[0] in (1, 3) and min(x.shape[1:]) >= 100
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.std()) > 0.02


def test_skimage_images_default_set():
    s = skimage_images(size=64)
    assert s.images.shape == (6, 3, 64, 64) and s.masks is None
    assert s.names == ["brick", "grass", "gravel", "coins", "immunohistochemistry", "chelsea"]
    grey = s.images[0]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])  # brick is grey, replicated
    assert not torch.equal(s.images[5, 0], s.images[5, 2])  # chelsea is colour


def test_unknown_image_names_the_choices():
    with pytest.raises(ValueError, match="brick"):
        skimage_images(names=["not_an_image"])


def _matches(images, masks, crops, sources, size):
    """``(I, H, W)``: does each pixel equal a recorded crop of the source its label names?"""
    hit = torch.zeros(masks.shape, dtype=torch.bool)
    for i, _, src, top, left in crops.tolist():
        crop = sources[src][0, top : top + size, left : left + size]
        hit[i] |= (masks[i] == src) & (images[i, 0] == crop)
    return hit


def test_mosaics_pixels_come_from_the_labelled_source():
    m = skimage_texture_mosaics(num_images=8, size=48, regions=(2, 4), seed=1)
    assert m.images.shape == (8, 1, 48, 48) and m.mask_names == ["brick", "grass", "gravel"]
    sources = [load_bundled(n) for n in m.mask_names]
    assert bool(_matches(m.images, m.masks, m.meta["crops"], sources, 48).all())
    wrong = (m.masks + 1) % 3  # control: shuffled labels must not match
    assert float(_matches(m.images, wrong, m.meta["crops"], sources, 48).float().mean()) < 0.1


def test_mosaics_deterministic_and_labelled():
    a, b, c = (skimage_texture_mosaics(num_images=4, size=32, seed=s) for s in (0, 0, 1))
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)
    assert all(2 <= len(mask.unique()) <= 3 for mask in a.masks)
    rgb = skimage_texture_mosaics(names=("brick", "chelsea"), num_images=2, size=32, regions=(2, 2))
    assert rgb.images.shape[1] == 3
