"""User image folders: a PNG round trip with masks, resize rules, channels, and one test per error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dpmodels.data import image_folder


def _write(root: Path, name: str, array: np.ndarray, folder: str = "images") -> Path:
    (root / folder).mkdir(parents=True, exist_ok=True)
    path = root / folder / name
    Image.fromarray(array).save(path)
    return path


def _rgb(seed: int, h: int = 20, w: int = 30) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _blocks(h: int = 20, w: int = 30, labels=(0, 1, 2)) -> np.ndarray:
    mask = np.zeros((h, w), dtype=np.uint8)
    for j, label in enumerate(labels):  # vertical bands, one label each
        mask[:, j * w // len(labels) : (j + 1) * w // len(labels)] = label
    return mask


def test_round_trip_with_masks_and_names(tmp_path):
    arrays = [_rgb(s) for s in range(3)]
    for k, a in enumerate(arrays):
        _write(tmp_path, f"img{k}.png", a)
        _write(tmp_path, f"img{k}.png", _blocks(labels=(k, 3, 4)), folder="masks")
    (tmp_path / "mask_names.txt").write_text("a\nb\nc\nd\ne\n")
    s = image_folder(tmp_path, size=20)  # shorter side already 20: a 20x20 centre crop, no resampling
    assert s.images.shape == (3, 3, 20, 20) and s.names == ["img0", "img1", "img2"]
    expected = torch.from_numpy(np.stack(arrays)[:, :, 5:25]).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(s.images, expected, atol=1e-6)
    masks = torch.from_numpy(np.stack([_blocks(labels=(k, 3, 4)) for k in range(3)])[:, :, 5:25]).long()
    assert torch.equal(s.masks, masks) and s.mask_names == ["a", "b", "c", "d", "e"]


def test_resizing_rules_keep_masks_aligned(tmp_path):
    _write(tmp_path, "wide.png", _blocks(40, 60, (10, 20, 30)) * 8)
    _write(tmp_path, "wide.png", _blocks(40, 60, (1, 2, 3)), folder="masks")
    crop = image_folder(tmp_path, size=10)  # 40x60 -> 10x15 -> centre 10x10
    assert crop.images.shape == (1, 1, 10, 10)
    assert crop.masks[0, :, 0].tolist() == [1] * 10 and crop.masks[0, :, -1].tolist() == [3] * 10
    assert set(crop.masks.unique().tolist()) == {1, 2, 3}
    stretch = image_folder(tmp_path, size=12, resize="stretch")
    assert stretch.masks[0, 0].tolist() == [1] * 4 + [2] * 4 + [3] * 4
    image_band = stretch.images[0, 0, :, 1]  # the grey level follows the same band as the mask
    assert torch.allclose(image_band, torch.full((12,), 80 / 255))


def test_channels_and_max_images(tmp_path):
    for k in range(3):
        _write(tmp_path, f"g{k}.png", _rgb(k)[..., 0])
    grey = image_folder(tmp_path, size=16)
    assert grey.channels == 1 and grey.masks is None
    rgb = image_folder(tmp_path, size=16, channels=3, max_images=2)
    assert rgb.images.shape == (2, 3, 16, 16) and torch.equal(rgb.images[:, 0], grey.images[:2, 0])


def test_jpeg_and_16_bit(tmp_path):
    _write(tmp_path, "a.jpg", _rgb(0))
    Image.fromarray(np.full((20, 30), 65535, dtype=np.uint16)).save(tmp_path / "images" / "b.png")
    s = image_folder(tmp_path, size=20, channels=3)
    assert s.names == ["a", "b"] and torch.allclose(s.images[1], torch.ones(3, 20, 20))


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        image_folder(tmp_path / "nowhere")


def test_missing_images_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no images/ folder"):
        image_folder(tmp_path)


def test_empty_images_folder(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match="holds no images"):
        image_folder(tmp_path)


def test_unreadable_image_is_named(tmp_path):
    _write(tmp_path, "good.png", _rgb(0))
    (tmp_path / "images" / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match="broken.png"):
        image_folder(tmp_path)


def test_mask_size_mismatch_names_both(tmp_path):
    _write(tmp_path, "x.png", _rgb(0))
    _write(tmp_path, "x.png", _blocks(10, 10), folder="masks")
    with pytest.raises(ValueError, match=r"mask x\.png is 10x10.*image x\.png is 30x20"):
        image_folder(tmp_path)


def test_masks_for_some_images_only(tmp_path):
    for k in range(3):
        _write(tmp_path, f"i{k}.png", _rgb(k))
    _write(tmp_path, "i1.png", _blocks(), folder="masks")
    with pytest.raises(ValueError, match=r"2 of 3 images have no mask.*i0\.png.*i2\.png"):
        image_folder(tmp_path)


def test_mixed_channels_suggests_channels_3(tmp_path):
    _write(tmp_path, "colour.png", _rgb(0))
    _write(tmp_path, "grey.png", _rgb(1)[..., 0])
    with pytest.raises(ValueError, match=r"grey\.png.*colour\.png.*channels=3"):
        image_folder(tmp_path)
    assert image_folder(tmp_path, channels=3).channels == 3


def test_duplicate_stems(tmp_path):
    _write(tmp_path, "same.png", _rgb(0))
    _write(tmp_path, "same.bmp", _rgb(1))
    with pytest.raises(ValueError, match="same"):
        image_folder(tmp_path)


def test_bad_arguments(tmp_path):
    _write(tmp_path, "a.png", _rgb(0))
    with pytest.raises(ValueError, match="resize"):
        image_folder(tmp_path, resize="squash")
    with pytest.raises(ValueError, match="channels"):
        image_folder(tmp_path, channels=2)


def test_jpeg_exif_orientation_is_applied_and_its_upright_mask_accepted(tmp_path):
    """A camera JPEG stored sideways with EXIF orientation 6 (rotate 90 degrees clockwise to view):
    read upright, and the mask drawn over the upright photo fits."""
    upright = np.zeros((40, 20, 3), dtype=np.uint8)  # (H, W): tall photo
    upright[:20] = 255  # top half white, bottom half black
    stored = np.rot90(upright, k=1)  # what the camera wrote: (20, 40), to be turned clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "images").mkdir()
    Image.fromarray(np.ascontiguousarray(stored)).save(
        tmp_path / "images" / "photo.jpg", exif=exif, quality=95
    )
    mask = np.zeros((40, 20), dtype=np.uint8)
    mask[20:] = 1  # label 1 on the bottom (black) half of the upright photo
    _write(tmp_path, "photo.png", mask, folder="masks")
    s = image_folder(tmp_path, size=20, resize="stretch")
    grey = s.images[0].mean(0)  # (H, W)
    assert grey[:10].mean() > 0.9 and grey[10:].mean() < 0.1  # white on top: upright
    assert (s.masks[0, 10:] == 1).all() and (s.masks[0, :10] == 0).all()


def test_mask_value_255_means_ignore_and_evaluation_skips_it(tmp_path):
    from dpmodels.evaluation.metrics import evaluate_labels

    _write(tmp_path, "a.png", _rgb(0))
    mask = _blocks(labels=(0, 1, 255))
    _write(tmp_path, "a.png", mask, folder="masks")
    s = image_folder(tmp_path, size=20, resize="stretch")
    assert set(torch.unique(s.masks).tolist()) == {-1, 0, 1}
    assert s.num_mask_labels == 2
    truth = s.masks.numpy()
    pred = np.where(truth < 0, 7, truth)  # anything at ignored pixels: must not count
    scores = evaluate_labels(pred, truth)
    assert scores["ari"] == pytest.approx(1.0) and scores["k_true"] == 2
