"""torchvision sets from local files only: the missing-files error, and a real load of idx files."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from dpmodels.data import torchvision_dataset


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An uncompressed idx file (the MNIST format): magic (0, 0, ubyte=8, ndim), big-endian dims, bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, folder: str, n_train: int = 6, n_test: int = 9) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        arrays[f"{split}-images"] = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        arrays[f"{split}-labels"] = rng.integers(0, 10, size=n, dtype=np.uint8)
        _write_idx(raw / f"{split}-images-idx3-ubyte", arrays[f"{split}-images"])
        _write_idx(raw / f"{split}-labels-idx1-ubyte", arrays[f"{split}-labels"])
    return arrays


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "cifar10"])
def test_missing_files_say_where_to_put_them(tmp_path, name):
    with pytest.raises(FileNotFoundError, match="downloads are disabled") as info:
        torchvision_dataset(name, tmp_path)
    message = str(info.value)
    expected = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "cifar10": "cifar-10-batches-py"}[
        name
    ]
    assert str(tmp_path / expected) in message


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_loads_real_idx_files(tmp_path, name, folder):
    arrays = _fake_mnist(tmp_path, folder)
    test = torchvision_dataset(name, tmp_path)
    assert test.images.shape == (9, 1, 28, 28) and test.masks is None and len(test.class_names) == 10
    assert torch.allclose(test.images[:, 0], torch.from_numpy(arrays["t10k-images"]).float() / 255)
    assert test.targets.tolist() == arrays["t10k-labels"].tolist()
    train = torchvision_dataset(name, tmp_path, train=True, num_images=4, seed=1)
    index = [int(n.rsplit("-", 1)[1]) for n in train.names]
    assert len(set(index)) == 4 and train.targets.tolist() == arrays["train-labels"][index].tolist()
    again = torchvision_dataset(name, tmp_path, train=True, num_images=4, seed=1)
    assert torch.equal(again.images, train.images)


def test_rejected_files_and_bad_arguments(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (folder / f).write_bytes(b"truncated")
    (folder / "batches.meta").write_bytes(b"truncated")
    with pytest.raises(ValueError, match="rejects them"):
        torchvision_dataset("cifar10", tmp_path)
    with pytest.raises(ValueError, match="mnist"):
        torchvision_dataset("imagenet", tmp_path)
    _fake_mnist(tmp_path, "MNIST")
    with pytest.raises(ValueError, match="num_images"):
        torchvision_dataset("mnist", tmp_path, num_images=100)
