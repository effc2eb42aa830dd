"""Procedural texture mosaics and patches: determinism, ground truth, separability, domain shifts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from dpmodels.data import TEXTURE_FAMILIES, Shift, texture_mosaics, texture_patches, voronoi_regions


def _class_colours(family: str) -> torch.Tensor:
    """``(T, 3)`` mean RGB of each texture of ``family`` over many patches."""
    p = texture_patches(40, 32, family=family, seed=11)
    return torch.stack([p.images[p.targets == k].mean((0, 2, 3)) for k in range(len(p.class_names))])


def _pattern_features(images: torch.Tensor) -> np.ndarray:
    """Colour-blind features: log contrast and the spectrum's share in orientation x radius bins."""
    grey = images.mean(1)  # (I, H, W)
    std = grey.std((1, 2))  # (I,)
    z = (grey - grey.mean((1, 2), keepdim=True)) / std.clamp_min(1e-6).view(-1, 1, 1)
    power = torch.fft.fft2(z).abs() ** 2  # (I, H, W)
    H, W = grey.shape[1:]
    fy, fx = torch.fft.fftfreq(H).view(H, 1), torch.fft.fftfreq(W).view(1, W)
    radius = torch.bucketize(torch.hypot(fy, fx), torch.tensor([0.02, 0.08, 0.16, 0.3]))  # (H, W) in 0..4
    angle = torch.bucketize(
        torch.remainder(torch.atan2(fy, fx), torch.pi), torch.linspace(0, torch.pi, 9)[1:-1]
    )
    bins = (radius * 8 + angle).flatten()  # (H*W,) in 0..39
    feats = torch.zeros(len(grey), 40).index_add_(1, bins, power.flatten(1)) / power.flatten(1).sum(
        1, keepdim=True
    )
    return torch.cat([(std + 1e-3).log().unsqueeze(1), feats], 1).numpy()


def test_families_are_disjoint_and_sized():
    a, b = set(TEXTURE_FAMILIES["A"]), set(TEXTURE_FAMILIES["B"])
    assert not a & b
    assert 6 <= len(a) <= 8 and 6 <= len(b) <= 8


@pytest.mark.parametrize("family", ["A", "B"])
def test_mosaics_shapes_ranges_and_labels(family):
    s = texture_mosaics(num_images=12, size=40, family=family, regions=(2, 5), seed=3)
    assert s.images.shape == (12, 3, 40, 40) and s.images.dtype == torch.float32
    assert 0.0 <= float(s.images.min()) and float(s.images.max()) <= 1.0
    assert s.masks.shape == (12, 40, 40) and s.masks.dtype == torch.int64
    assert s.mask_names == list(TEXTURE_FAMILIES[family])
    assert 0 <= int(s.masks.min()) and int(s.masks.max()) < len(s.mask_names)
    per_image = [len(m.unique()) for m in s.masks]  # each cell has its own texture
    assert min(per_image) >= 2 and max(per_image) <= 5


def test_mosaics_deterministic_by_seed():
    a, b, c = (texture_mosaics(6, 32, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.images, c.images)
    p, q, r = (texture_patches(5, 16, family="B", seed=s) for s in (1, 1, 2))
    assert torch.equal(p.images, q.images) and torch.equal(p.targets, q.targets)
    assert not torch.equal(p.images, r.images)


def test_voronoi_cells_are_never_empty():
    g = torch.Generator().manual_seed(0)
    region, counts = voronoi_regions(200, 16, (3, 6), g)
    assert int(counts.min()) >= 3 and int(counts.max()) <= 6
    for r, n in zip(region, counts, strict=True):
        assert set(r.unique().tolist()) == set(range(int(n)))


@pytest.mark.parametrize("family", ["A", "B"])
def test_mosaic_labels_match_the_drawn_texture(family):
    """Each region's mean colour is nearest to the mean colour of the texture its label names."""
    colours = _class_colours(family)  # (T, 3)
    s = texture_mosaics(40, 64, family=family, seed=2)
    T = len(s.mask_names)
    cell = (torch.arange(40).view(-1, 1, 1) * T + s.masks).flatten()  # (I*H*W,) one bin per (image, texture)
    pixels = s.images.permute(0, 2, 3, 1).reshape(-1, 3)  # (I*H*W, 3)
    count = torch.bincount(cell, minlength=40 * T)  # (I*T,)
    mean = torch.zeros(40 * T, 3).index_add_(0, cell, pixels) / count.clamp_min(1).unsqueeze(1)  # (I*T, 3)
    big = count >= 150  # a sliver shows too little of a pattern to average it
    nearest = torch.cdist(mean[big], colours).argmin(1)  # (cells,)
    assert int(big.sum()) > 80
    assert torch.equal(nearest, torch.arange(40 * T)[big] % T)


@pytest.mark.parametrize("family", ["A", "B"])
def test_texture_colours_are_distinct(family):
    colours = _class_colours(family)
    gaps = torch.cdist(colours, colours) + 10 * torch.eye(len(colours))
    assert float(gaps.min()) > 0.15


@pytest.mark.parametrize("family", ["A", "B"])
def test_patterns_are_separable_without_colour(family):
    """A linear classifier on colour-blind spectral features beats chance (1/T) comfortably on held-out seeds."""
    train, test = (
        texture_patches(30, 32, family=family, seed=0),
        texture_patches(20, 32, family=family, seed=1),
    )
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    clf.fit(_pattern_features(train.images), train.targets.numpy())
    accuracy = clf.score(_pattern_features(test.images), test.targets.numpy())
    assert accuracy > 0.85, accuracy


def test_patches_targets_and_masks():
    p = texture_patches(7, 24, family="A", textures=["dots", "plaid"], seed=0)
    ids = {TEXTURE_FAMILIES["A"].index("dots"), TEXTURE_FAMILIES["A"].index("plaid")}
    assert p.images.shape == (14, 3, 24, 24)
    assert set(p.targets.tolist()) == ids and torch.bincount(p.targets).max() == 7
    assert torch.equal(p.masks, p.targets.view(-1, 1, 1).expand(-1, 24, 24))
    assert p.class_names == list(TEXTURE_FAMILIES["A"])


def test_shift_identity_and_pairing():
    clean = texture_mosaics(4, 32, seed=9)
    assert torch.equal(texture_mosaics(4, 32, seed=9, shift=Shift()).images, clean.images)
    noisy = texture_mosaics(4, 32, seed=9, shift=Shift(noise=0.05))
    assert torch.equal(noisy.masks, clean.masks)  # the same scenes, only the pixels shifted
    assert 0.03 < float((noisy.images - clean.images).std()) < 0.06
    assert noisy.meta["shift"]["noise"] == 0.05 and clean.meta["shift"] is None
    patches = texture_patches(3, 16, seed=9, shift=Shift(contrast=0.5))
    assert torch.allclose(patches.images, Shift(contrast=0.5).apply(texture_patches(3, 16, seed=9).images))


def test_shift_noise_increases_pixel_std():
    p = texture_patches(10, 32, family="B", textures=["flat"], seed=0)
    stds = [float(Shift(noise=n).apply(p.images).std((2, 3)).mean()) for n in (0.0, 0.02, 0.05, 0.1)]
    assert all(a < b for a, b in zip(stds, stds[1:], strict=False)), stds


def test_shift_colour_contrast_and_blur():
    x = texture_patches(3, 32, family="A", seed=4).images
    rotated = Shift(colour=120.0).apply(x)  # a third of a turn about the grey axis cycles R -> G -> B
    assert torch.allclose(rotated, x[:, [2, 0, 1]], atol=1e-5)
    flat = Shift(contrast=0.0).apply(x)
    assert torch.allclose(flat, x.mean((2, 3), keepdim=True).expand_as(x), atol=1e-6)
    blurred = Shift(blur=1.5).apply(x)
    assert float(blurred.std((2, 3)).mean()) < float(x.std((2, 3)).mean())
    assert torch.allclose(blurred.mean((2, 3)), x.mean((2, 3)), atol=0.03)
    with pytest.raises(ValueError, match="RGB"):
        Shift(colour=30.0).apply(x[:, :1])
    with pytest.raises(ValueError, match="noise"):
        Shift(noise=-0.1)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="family"):
        texture_mosaics(2, family="C")
    with pytest.raises(ValueError, match="unknown"):
        texture_mosaics(2, textures=["rings"])  # a family-B texture in family A
    with pytest.raises(ValueError, match="regions"):
        texture_mosaics(2, textures=["dots", "plaid"], regions=(2, 3))
    with pytest.raises(ValueError, match="size"):
        texture_patches(2, size=4)


def test_many_images_generate_with_their_masks():
    # (its speed, about 0.2 s on an idle core, is not asserted: a wall-clock bound fails on loaded machines)
    s = texture_mosaics(300, 64, family="B", seed=0)
    assert s.images.shape == (300, 3, 64, 64) and s.masks.shape == (300, 64, 64)
    assert bool(torch.isfinite(s.images).all()) and int(s.masks.min()) >= 0
