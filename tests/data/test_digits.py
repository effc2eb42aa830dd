"""scikit-learn digits as an ImageSet: shapes, targets, stroke masks, seeded selection."""

from __future__ import annotations

import pytest
import torch
from sklearn.datasets import load_digits

from dpmodels.data import digits_images


def test_shapes_targets_and_names():
    d = digits_images(num_images=50, size=24, seed=0)
    assert d.images.shape == (50, 1, 24, 24) and d.images.dtype == torch.float32
    assert 0.0 <= float(d.images.min()) and float(d.images.max()) <= 1.0
    assert d.masks.shape == (50, 24, 24) and set(d.masks.unique().tolist()) <= {0, 1}
    assert d.mask_names == ["background", "stroke"] and d.class_names == [str(k) for k in range(10)]
    source = load_digits()
    for name, target in zip(d.names, d.targets, strict=True):  # targets follow the source images
        assert int(source.target[int(name.split("-")[1])]) == int(target)


def test_all_images_and_stroke_fraction():
    d = digits_images()
    assert len(d) == 1797 and len(set(d.names)) == 1797
    fraction = d.masks.float().mean((1, 2))  # (I,) share of stroke pixels per image
    assert 0.1 < float(fraction.min()) and float(fraction.max()) < 0.6
    stroke = d.images[:, 0][d.masks == 1]
    background = d.images[:, 0][d.masks == 0]
    assert float(stroke.min()) > d.meta["threshold"] >= float(background.max())


def test_upsampling_keeps_the_digit():
    d = digits_images(num_images=20, size=32, seed=3)
    small = torch.nn.functional.avg_pool2d(d.images, 4)  # back to 8x8
    source = torch.as_tensor(load_digits().images, dtype=torch.float32) / 16.0
    originals = torch.stack([source[int(n.split("-")[1])] for n in d.names]).unsqueeze(1)
    assert float((small - originals).abs().mean()) < 0.08


def test_deterministic_by_seed_and_threshold():
    a, b, c = (digits_images(num_images=30, seed=s) for s in (1, 1, 2))
    assert torch.equal(a.images, b.images) and a.names == b.names
    assert a.names != c.names
    loose, strict = (
        digits_images(num_images=30, threshold=0.2, seed=1),
        digits_images(30, threshold=0.7, seed=1),
    )
    assert int(loose.masks.sum()) > int(strict.masks.sum())


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_images"):
        digits_images(num_images=5000)
    with pytest.raises(ValueError, match="threshold"):
        digits_images(threshold=1.5)
    with pytest.raises(ValueError, match="size"):
        digits_images(size=4)
