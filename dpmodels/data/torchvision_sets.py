"""MNIST, Fashion-MNIST and CIFAR-10 from local files through torchvision (downloads disabled)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchvision import datasets

from .images import ImageSet

__all__ = ["TORCHVISION_SETS", "torchvision_dataset"]

_MNIST_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]
_CIFAR_FILES = [
    "data_batch_1",
    "data_batch_2",
    "data_batch_3",
    "data_batch_4",
    "data_batch_5",
    "test_batch",
    "batches.meta",
]

# name -> (torchvision class, folder under root, files in it)
TORCHVISION_SETS: dict[str, tuple[type, str, list[str]]] = {
    "mnist": (datasets.MNIST, "MNIST/raw", _MNIST_FILES),
    "fashion_mnist": (datasets.FashionMNIST, "FashionMNIST/raw", _MNIST_FILES),
    "cifar10": (datasets.CIFAR10, "cifar-10-batches-py", _CIFAR_FILES),
}


def _missing_files_error(name: str, root: Path, missing: list[str]) -> FileNotFoundError:
    _, folder, files = TORCHVISION_SETS[name]
    layout = "\n".join(f"    {root / folder / f}" for f in files)
    return FileNotFoundError(
        f"{name}: downloads are disabled (no internet) and these files are missing: {missing}.\n"
        f"Put the data set here (the layout torchvision expects, uncompressed):\n{layout}\n"
        "Copy them from a machine where `torchvision.datasets."
        f"{TORCHVISION_SETS[name][0].__name__}(root, download=True)` ran, or pass the right root."
    )


def torchvision_dataset(
    name: str, root: str | os.PathLike, train: bool = False, num_images: int | None = None, seed: int = 0
) -> ImageSet:
    """A torchvision data set read from ``root`` (never downloaded) as an ``ImageSet``.

    ``mnist`` / ``fashion_mnist`` give ``(I, 1, 28, 28)``, ``cifar10`` gives ``(I, 3, 32, 32)``, all in
    ``[0, 1]``, with ``targets`` and ``class_names`` from torchvision and no masks. ``train`` picks the
    split. ``num_images`` draws that many images without replacement (seeded, in drawn order);
    ``None`` keeps the whole split in its stored order. Missing files raise ``FileNotFoundError``
    naming the expected layout.
    """
    if name not in TORCHVISION_SETS:
        raise ValueError(f"name must be one of {sorted(TORCHVISION_SETS)}, got {name!r}.")
    cls, folder, files = TORCHVISION_SETS[name]
    root = Path(root)
    missing = [f for f in files if not (root / folder / f).is_file()]
    if missing:
        raise _missing_files_error(name, root, missing)
    try:
        ds = cls(str(root), train=train, download=False)
    except RuntimeError as err:  # torchvision's integrity check (e.g. CIFAR-10's MD5 sums) failed
        raise ValueError(
            f"{name}: the files under {root / folder} are present but torchvision rejects them ({err}); "
            "they may be truncated or from another release. Replace them with the original files."
        ) from err
    data = torch.as_tensor(np.asarray(ds.data))  # (I, H, W) uint8 or (I, H, W, 3) uint8
    images = (
        data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)
    ).float() / 255.0  # (I, C, H, W)
    targets = torch.as_tensor(ds.targets).long()
    index = torch.arange(len(targets))
    if num_images is not None:
        if not 1 <= num_images <= len(targets):
            raise ValueError(f"num_images must be between 1 and {len(targets)} for {name}, got {num_images}.")
        index = torch.randperm(len(targets), generator=torch.Generator().manual_seed(seed))[:num_images]
    split = "train" if train else "test"
    return ImageSet(
        images[index].contiguous(),
        None,
        targets[index],
        [f"{name}-{split}-{int(i)}" for i in index],
        None,
        [str(c) for c in ds.classes],
        name,
        {
            "source": f"torchvision.datasets.{cls.__name__}",
            "split": split,
            "num_images": num_images,
            "seed": seed,
        },
    )
