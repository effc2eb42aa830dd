"""Loading any image data set by name."""

from __future__ import annotations

import pytest
import torch

from dpmodels.data import DATASETS, ImageSet, load_dataset, texture_mosaics


def test_all_names_are_registered():
    expected = {"textures", "texture_patches", "digits", "skimage", "skimage_mosaics", "folder"}
    assert set(DATASETS) == expected | {"mnist", "fashion_mnist", "cifar10"}


def test_load_by_name_equals_the_loader():
    s = load_dataset("textures", num_images=3, size=16, regions=(2, 3), seed=4)
    assert isinstance(s, ImageSet)
    assert torch.equal(s.images, texture_mosaics(num_images=3, size=16, regions=(2, 3), seed=4).images)
    assert load_dataset("digits", num_images=2).images.shape == (2, 1, 32, 32)
    assert load_dataset("texture_patches", num_per_class=1, size=16, family="B").targets.numel() == 8


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid names.*digits"):
        load_dataset("imagenet")


def test_wrong_argument_shows_the_signature():
    with pytest.raises(TypeError, match="digits accepts .*threshold"):
        load_dataset("digits", colour=True)


def test_torchvision_names_pass_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST/raw"):
        load_dataset("mnist", root=tmp_path)
