"""Images bundled inside the installed scikit-image package (no download): whole images and texture mosaics.

Only images whose file ships in ``skimage/data`` are offered; ``skimage.data`` would try to download
the others through pooch, which cannot work offline. Each loader checks the file before reading it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F

from .images import ImageSet
from .textures import voronoi_regions

__all__ = ["BUNDLED_IMAGES", "load_bundled", "skimage_images", "skimage_texture_mosaics"]

BUNDLED_IMAGES: dict[str, str] = {
    "astronaut": "astronaut.png",
    "brick": "brick.png",
    "camera": "camera.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "coins": "coins.png",
    "grass": "grass.png",
    "gravel": "gravel.png",
    "immunohistochemistry": "ihc.png",
    "moon": "moon.png",
    "page": "page.png",
    "rocket": "rocket.jpg",
    "text": "text.png",
}
"""``skimage.data`` loader name -> the file it reads from the package's own data folder."""


def load_bundled(name: str) -> torch.Tensor:
    """Bundled image ``name`` as a float ``(C, H, W)`` tensor in ``[0, 1]`` (``C`` = 1 grey, 3 RGB)."""
    if name not in BUNDLED_IMAGES:
        raise ValueError(
            f"{name!r} is not a bundled scikit-image image; choose from {sorted(BUNDLED_IMAGES)}."
        )
    path = os.path.join(os.path.dirname(skimage.data.__file__), BUNDLED_IMAGES[name])
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"scikit-image image {name!r}: its file {BUNDLED_IMAGES[name]} is not in {os.path.dirname(path)}; "
            "this installation does not bundle it and downloads are disabled. Reinstall scikit-image "
            "or choose another image."
        )
    try:
        arr = np.asarray(getattr(skimage.data, name)())
    except Exception as err:  # noqa: BLE001 - any failure to read gets the same advice
        raise FileNotFoundError(f"scikit-image image {name!r} could not be read from {path}: {err}") from err
    if arr.dtype != np.uint8:
        raise ValueError(f"scikit-image image {name!r}: expected uint8 pixels, got {arr.dtype}.")
    x = torch.from_numpy(arr.copy()).float() / 255.0
    return x.unsqueeze(0) if x.dim() == 2 else x[..., :3].permute(2, 0, 1)  # (C, H, W)


def _square(x: torch.Tensor, size: int) -> torch.Tensor:
    """Resize ``(C, H, W)`` so the shorter side is ``size`` (bilinear, antialiased), then centre-crop."""
    _, H, W = x.shape
    scale = size / min(H, W)
    h, w = max(size, round(H * scale)), max(size, round(W * scale))
    y = F.interpolate(x.unsqueeze(0), size=(h, w), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (h - size) // 2, (w - size) // 2
    return y[:, top : top + size, left : left + size].clamp(0, 1)


def skimage_images(
    names: Sequence[str] = ("brick", "grass", "gravel", "coins", "immunohistochemistry", "chelsea"),
    size: int = 128,
) -> ImageSet:
    """Bundled scikit-image images as ``(I, 3, size, size)`` RGB (grey images are replicated).

    Each image is resized so its shorter side is ``size`` and centre-cropped to a square. No masks;
    ``names`` and ``targets`` (``0..I-1``, with ``class_names`` = names) identify the images.
    """
    names = list(names)
    if not names or not isinstance(size, int) or size < 8:
        raise ValueError(
            f"need at least one image name and an int size >= 8, got names={names}, size={size!r}."
        )
    images = torch.stack([_square(load_bundled(n), size).expand(3, -1, -1) for n in names])  # (I, 3, H, W)
    return ImageSet(
        images,
        None,
        torch.arange(len(names)),
        names,
        None,
        list(names),
        "skimage",
        {"source": "skimage.data", "size": size, "resize": "shorter_side_then_center_crop"},
    )


def skimage_texture_mosaics(
    names: Sequence[str] = ("brick", "grass", "gravel"),
    num_images: int = 32,
    size: int = 64,
    regions: tuple[int, int] = (2, 4),
    seed: int = 0,
    scale: float = 1.0,
) -> ImageSet:
    """Voronoi mosaics of natural textures cut from bundled scikit-image images, with texture masks.

    Each image ``(I, C, size, size)`` is split into ``regions[0]..regions[1]`` Voronoi cells, each
    filled with a random ``size`` x ``size`` crop of a source image (sources resized by ``scale``
    first); cells take the sources in a random order, all distinct until there are more cells than
    sources. ``C`` is 1 when every source is grayscale (as brick, grass and gravel are) and 3
    otherwise (grey sources replicated). ``masks`` hold the index into ``names`` (= ``mask_names``);
    ``meta["crops"]`` records where each cell's crop came from (after scaling).
    """
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"names must be distinct bundled image names, got {names}.")
    if not isinstance(size, int) or size < 8 or not 0.05 <= scale <= 4.0:
        raise ValueError(f"need an int size >= 8 and 0.05 <= scale <= 4, got size={size!r}, scale={scale!r}.")
    sources = [load_bundled(n) for n in names]
    if scale != 1.0:
        sources = [
            F.interpolate(s[None], scale_factor=scale, mode="bilinear", antialias=True, align_corners=False)[
                0
            ]
            for s in sources
        ]
    small = [n for n, s in zip(names, sources, strict=True) if min(s.shape[1:]) < size]
    if small:
        raise ValueError(f"sources {small} are smaller than size={size} after scale={scale}; raise scale.")
    C = max(s.shape[0] for s in sources)
    g = torch.Generator().manual_seed(seed)
    region, counts = voronoi_regions(num_images, size, regions, g)  # (I, H, W), (I,)
    perm = torch.rand(num_images, len(names), generator=g).argsort(1)  # (I, n) a random order of sources
    pick = perm[:, torch.arange(regions[1]) % len(names)]  # (I, R) source id per cell, cycling if R > n
    images, crops = torch.zeros(num_images, C, size, size), []
    for i in range(num_images):
        for k in range(int(counts[i])):
            src = sources[int(pick[i, k])]
            top = int(torch.randint(0, src.shape[1] - size + 1, (1,), generator=g))
            left = int(torch.randint(0, src.shape[2] - size + 1, (1,), generator=g))
            crop = src[:, top : top + size, left : left + size].expand(C, -1, -1)  # (C, H, W)
            images[i] += (region[i] == k) * crop
            crops.append((i, k, int(pick[i, k]), top, left))
    masks = torch.gather(pick, 1, region.view(num_images, -1)).view_as(region)  # (I, H, W)
    meta = {"source": "skimage.data", "names": names, "regions": tuple(regions), "scale": scale, "seed": seed}
    meta["crops"] = torch.tensor(crops)  # (cells, 5): image, cell, source id, top, left of each crop
    return ImageSet(images, masks, None, [], names, None, "skimage_mosaics", meta)
