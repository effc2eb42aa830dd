"""Procedural colour textures with per-pixel ground truth: Voronoi mosaics and single-texture patches.

Two disjoint families of named textures. Every texture has its own pattern *and* its own colour pair
(foreground, background), and every instance gets a small random phase, orientation, period and
colour jitter, so no two instances are equal. Family ``"A"`` is periodic and geometric (gratings,
checkerboard, dots, plaid); family ``"B"`` is stochastic or radial (noise spectra, rings, zig-zag,
crosshatch, bricks, flat colour, blobs). Labels are global within a family: texture ``k`` of a
family has mask label ``k`` in every image. All generation is vectorised in torch and seeded.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from .images import ImageSet

__all__ = ["TEXTURE_FAMILIES", "Shift", "texture_mosaics", "texture_patches", "voronoi_regions"]

Pattern = Callable[[int, int, int, torch.Generator], Tensor]  # (n, H, W, generator) -> (n, H, W) in [0, 1]


@dataclass(frozen=True)
class Shift:
    """A controllable domain shift of ``(I, C, H, W)`` images in ``[0, 1]``; the defaults are the identity.

    Applied in this order, then clamped to ``[0, 1]``: ``blur`` (Gaussian, sigma in pixels),
    ``colour`` (hue rotation in degrees about the grey axis; RGB only), ``contrast`` (factor on the
    deviations from each image's per-channel mean), ``brightness`` (added offset) and ``noise``
    (standard deviation of additive Gaussian noise).
    """

    contrast: float = 1.0
    noise: float = 0.0
    colour: float = 0.0
    brightness: float = 0.0
    blur: float = 0.0

    def __post_init__(self) -> None:
        for key, value in asdict(self).items():
            if not math.isfinite(value):
                raise ValueError(f"Shift.{key} must be finite, got {value!r}.")
        for key in ("contrast", "noise", "blur"):
            if getattr(self, key) < 0:
                raise ValueError(f"Shift.{key} must be >= 0, got {getattr(self, key)!r}.")

    @property
    def is_identity(self) -> bool:
        """True when every strength is at its identity value (``apply`` then returns its input)."""
        return self == Shift()

    def apply(self, images: Tensor, seed: int = 0) -> Tensor:
        """The shifted ``(I, C, H, W)`` images; the noise comes from its own stream seeded by ``seed``."""
        if images.dim() != 4:
            raise ValueError(f"images must be (I, C, H, W), got shape {tuple(images.shape)}.")
        if self.is_identity:
            return images
        x = images.float()
        C = x.shape[1]
        if self.blur > 0:
            r = max(1, math.ceil(3 * self.blur))
            k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / self.blur) ** 2)
            k = (k / k.sum()).repeat(C, 1, 1, 1)  # (C, 1, 1, 2r+1)
            x = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
            x = torch.nn.functional.conv2d(x, k, groups=C)  # along x
            x = torch.nn.functional.conv2d(x, k.transpose(-1, -2), groups=C)  # along y
        if self.colour != 0:
            if C != 3:
                raise ValueError(f"Shift.colour rotates hue and needs RGB images (C = 3), got C = {C}.")
            a = math.radians(self.colour)
            axis = torch.full((3,), 1 / math.sqrt(3))
            cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / math.sqrt(3)  # [axis]_x
            rot = (
                math.cos(a) * torch.eye(3) + math.sin(a) * cross + (1 - math.cos(a)) * torch.outer(axis, axis)
            )
            x = torch.einsum("dc,ichw->idhw", rot, x)  # (I, 3, H, W) Rodrigues rotation about grey
        if self.contrast != 1:
            mean = x.mean((2, 3), keepdim=True)  # (I, C, 1, 1)
            x = mean + self.contrast * (x - mean)
        if self.brightness != 0:
            x = x + self.brightness
        if self.noise > 0:
            g = torch.Generator().manual_seed(seed + 7919)
            x = x + self.noise * torch.randn(x.shape, generator=g)
        return x.clamp(0, 1)


def _u(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return (lo + (hi - lo) * torch.rand(n, generator=g)).view(n, 1, 1)  # (n, 1, 1)


def _coords(n: int, H: int, W: int, g: torch.Generator, angle: float, jitter: float = 5.0):
    """Rotated pixel coordinates ``(u, v)``, each ``(n, H, W)``, with a random angle jitter and shift."""
    theta = torch.deg2rad(angle + _u(n, -jitter, jitter, g))  # (n, 1, 1)
    y = torch.arange(H, dtype=torch.float32).view(1, H, 1) + _u(n, 0, 64, g)
    x = torch.arange(W, dtype=torch.float32).view(1, 1, W) + _u(n, 0, 64, g)
    return x * theta.cos() + y * theta.sin(), -x * theta.sin() + y * theta.cos()


def _grating(angle: float, period: float) -> Pattern:
    def make(n, H, W, g):
        u, _ = _coords(n, H, W, g, angle)
        p = period * _u(n, 0.9, 1.1, g)
        return 0.5 + 0.5 * torch.sin(2 * math.pi * u / p)

    return make


def _checkerboard(n, H, W, g):
    u, v = _coords(n, H, W, g, 0.0)
    c = 6.0 * _u(n, 0.9, 1.1, g)
    return torch.sigmoid(8 * torch.sin(math.pi * u / c) * torch.sin(math.pi * v / c))


def _dots(n, H, W, g):
    u, v = _coords(n, H, W, g, 0.0)
    p = 8.0 * _u(n, 0.9, 1.1, g)
    d = p * torch.hypot(torch.frac(u / p) - 0.5, torch.frac(v / p) - 0.5)  # distance to the lattice point
    return torch.sigmoid(3 * (2.4 - d))


def _plaid(n, H, W, g):
    u, v = _coords(n, H, W, g, 0.0)
    p = 10.0 * _u(n, 0.9, 1.1, g)
    return 0.5 + 0.25 * (torch.sin(2 * math.pi * u / p) + torch.sin(2 * math.pi * v / p))


def _spectral_noise(n: int, H: int, W: int, g: torch.Generator, filt: Callable[[Tensor], Tensor]) -> Tensor:
    """White noise shaped in the Fourier domain by ``filt(radial frequency)``, standardised per instance."""
    white = torch.randn(n, H, W, generator=g)
    f = torch.hypot(torch.fft.fftfreq(H).view(H, 1), torch.fft.fftfreq(W).view(1, W))  # (H, W) cycles/px
    z = torch.fft.ifft2(torch.fft.fft2(white) * filt(f)).real  # (n, H, W)
    z = z - z.mean((1, 2), keepdim=True)
    return z / z.std((1, 2), keepdim=True).clamp_min(1e-6)


def _pink_noise(n, H, W, g):
    z = _spectral_noise(n, H, W, g, lambda f: 1.0 / f.clamp_min(1.0 / max(H, W)))
    return (0.5 + 0.2 * z).clamp(0, 1)


def _white_noise(n, H, W, g):
    return torch.rand(n, H, W, generator=g)


def _blobs(n, H, W, g):
    return torch.sigmoid(4 * _spectral_noise(n, H, W, g, lambda f: torch.exp(-0.5 * (f / 0.07) ** 2)))


def _rings(n, H, W, g):
    cy, cx = _u(n, 0, H, g), _u(n, 0, W, g)
    r = torch.hypot(torch.arange(H).view(1, H, 1) - cy, torch.arange(W).view(1, 1, W) - cx)  # (n, H, W)
    return 0.5 + 0.5 * torch.cos(2 * math.pi * r / (7.0 * _u(n, 0.9, 1.1, g)) + _u(n, 0, 2 * math.pi, g))


def _zigzag(n, H, W, g):
    u, v = _coords(n, H, W, g, 0.0)
    tri = 2 * torch.abs(torch.frac(v / 12.0) - 0.5)  # (n, H, W) triangle wave in [0, 1]
    return torch.sigmoid(4 * torch.sin(2 * math.pi * (u + 6.0 * tri) / (7.0 * _u(n, 0.9, 1.1, g))))


def _crosshatch(n, H, W, g):
    u, v = _coords(n, H, W, g, 45.0)
    p = 7.0 * _u(n, 0.9, 1.1, g)
    return torch.maximum(torch.cos(math.pi * u / p) ** 16, torch.cos(math.pi * v / p) ** 16)


def _bricks(n, H, W, g):
    u, v = _coords(n, H, W, g, 0.0, jitter=2.0)
    h, w = 7.0, 14.0
    row = torch.floor(v / h)
    along = u + 0.5 * w * torch.remainder(row, 2)  # alternate rows are offset by half a brick
    edge = torch.minimum(
        h * (0.5 - torch.abs(torch.frac(v / h) - 0.5)), w * (0.5 - (torch.frac(along / w) - 0.5).abs())
    )
    return torch.sigmoid(3 * (1.0 - edge))  # 1 on the mortar lines


def _flat(n, H, W, g):
    return 0.5 + 0.1 * torch.randn(n, H, W, generator=g)  # with the colours below: pixel noise of std 0.01


# name -> (pattern, foreground RGB, background RGB)
_TEXTURES: dict[str, tuple[Pattern, tuple[float, ...], tuple[float, ...]]] = {
    "grating_h": (_grating(90.0, 8.0), (0.90, 0.20, 0.15), (0.35, 0.05, 0.05)),
    "grating_v": (_grating(0.0, 8.0), (0.20, 0.80, 0.25), (0.05, 0.25, 0.05)),
    "grating_diag": (_grating(45.0, 6.0), (0.25, 0.40, 0.95), (0.05, 0.08, 0.35)),
    "grating_fine": (_grating(135.0, 3.5), (0.95, 0.85, 0.20), (0.45, 0.35, 0.05)),
    "checkerboard": (_checkerboard, (0.95, 0.95, 0.95), (0.15, 0.15, 0.15)),
    "dots": (_dots, (0.95, 0.45, 0.85), (0.30, 0.10, 0.35)),
    "plaid": (_plaid, (0.20, 0.85, 0.90), (0.05, 0.30, 0.35)),
    "pink_noise": (_pink_noise, (0.95, 0.60, 0.25), (0.35, 0.18, 0.05)),
    "white_noise": (_white_noise, (0.75, 0.75, 0.95), (0.20, 0.20, 0.35)),
    "rings": (_rings, (0.30, 0.90, 0.60), (0.05, 0.35, 0.20)),
    "zigzag": (_zigzag, (0.95, 0.30, 0.45), (0.40, 0.05, 0.15)),
    "crosshatch": (_crosshatch, (0.10, 0.10, 0.20), (0.85, 0.85, 0.65)),
    "bricks": (_bricks, (0.85, 0.85, 0.80), (0.60, 0.25, 0.10)),
    "flat": (_flat, (0.50, 0.60, 0.25), (0.40, 0.50, 0.15)),
    "blobs": (_blobs, (0.10, 0.45, 0.90), (0.20, 0.85, 0.95)),
}

TEXTURE_FAMILIES: dict[str, tuple[str, ...]] = {
    "A": ("grating_h", "grating_v", "grating_diag", "grating_fine", "checkerboard", "dots", "plaid"),
    "B": ("pink_noise", "white_noise", "rings", "zigzag", "crosshatch", "bricks", "flat", "blobs"),
}
"""Family name -> its texture names; a texture's mask label / class id is its position here."""


def _render(name: str, n: int, H: int, W: int, g: torch.Generator) -> Tensor:
    """``n`` instances of texture ``name`` as ``(n, 3, H, W)`` RGB in ``[0, 1]``."""
    pattern, fg, bg = _TEXTURES[name]
    p = pattern(n, H, W, g).unsqueeze(1)  # (n, 1, H, W)
    jitter = 0.03 * (2 * torch.rand(n, 3, 1, 1, generator=g) - 1)  # per-instance colour jitter
    fg_t = torch.tensor(fg).view(1, 3, 1, 1) + jitter
    bg_t = torch.tensor(bg).view(1, 3, 1, 1) + jitter
    return (bg_t + p * (fg_t - bg_t)).clamp(0, 1)  # (n, 3, H, W)


def _family_ids(family: str, textures: Sequence[str] | None) -> tuple[tuple[str, ...], Tensor]:
    if family not in TEXTURE_FAMILIES:
        raise ValueError(f"family must be one of {sorted(TEXTURE_FAMILIES)}, got {family!r}.")
    names = TEXTURE_FAMILIES[family]
    chosen = names if textures is None else tuple(textures)
    bad = [t for t in chosen if t not in names]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"textures must be distinct names from family {family!r} {list(names)}, got {list(chosen)}; "
            f"unknown: {bad}. Pass textures=None to use the whole family."
        )
    return names, torch.tensor([names.index(t) for t in chosen])


def _shift_meta(shift: Shift | None) -> dict | None:
    if shift is not None and not isinstance(shift, Shift):
        raise ValueError(f"shift must be a Shift or None, got {type(shift).__name__}.")
    return None if shift is None else asdict(shift)


def _check_size(size: int, minimum: int = 8) -> None:
    if not isinstance(size, int) or size < minimum:
        raise ValueError(f"size must be an int >= {minimum} (pixels per side), got {size!r}.")


def voronoi_regions(
    num_images: int, size: int, regions: tuple[int, int], generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Random Voronoi partitions: ``(I, H, W)`` region index and ``(I,)`` region counts.

    Image ``i`` gets ``counts[i]`` cells, drawn uniformly in ``[regions[0], regions[1]]``. Seed points
    sit on distinct pixels, spread by best-of-16 candidate sampling, so every cell holds at least its
    seed pixel (no cell is empty) and cells are rarely slivers.
    """
    lo, hi = regions
    if not (1 <= lo <= hi):
        raise ValueError(f"regions must be (min, max) with 1 <= min <= max, got {regions!r}.")
    I, H, W = num_images, size, size
    counts = torch.randint(lo, hi + 1, (I,), generator=generator)  # (I,)
    seeds = torch.zeros(I, 0, 2)
    for _ in range(hi):
        cand = torch.stack([torch.randint(0, n, (I, 16), generator=generator) for n in (H, W)], -1).float()
        if seeds.shape[1] == 0:
            best = cand[:, 0]
        else:
            score = torch.cdist(cand, seeds).amin(-1)  # (I, 16) distance to the nearest existing seed
            best = cand[torch.arange(I), score.argmax(-1)]
        seeds = torch.cat([seeds, best.unsqueeze(1)], 1)  # (I, k, 2)
    grid = (
        torch.stack(torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij"), -1)
        .float()
        .view(1, -1, 2)
    )
    unused = torch.arange(hi).view(1, 1, hi) >= counts.view(I, 1, 1)  # (I, 1, hi) seeds beyond the count
    region = torch.empty(I, H * W, dtype=torch.long)
    for start in range(0, I, 128):  # blocks of images bound the (block, H*W, hi) distance table
        stop = min(I, start + 128)
        dist = torch.cdist(grid.expand(stop - start, -1, -1), seeds[start:stop])  # (block, H*W, hi)
        region[start:stop] = dist.masked_fill(unused[start:stop], float("inf")).argmin(-1)
    return region.view(I, H, W), counts


def texture_mosaics(
    num_images: int = 64,
    size: int = 64,
    family: str = "A",
    regions: tuple[int, int] = (2, 6),
    textures: Sequence[str] | None = None,
    shift: Shift | None = None,
    seed: int = 0,
    *,
    contrast: float = 1.0,
    noise: float = 0.0,
    colour: float = 0.0,
) -> ImageSet:
    """Voronoi mosaics of distinct textures with per-pixel texture labels.

    Each of ``num_images`` RGB images ``(I, 3, size, size)`` is cut into ``regions[0]..regions[1]``
    Voronoi cells; each cell shows a different texture of ``family`` (drawn at random from
    ``textures``, default the whole family). ``masks`` hold the texture's index in
    ``TEXTURE_FAMILIES[family]``; ``mask_names`` are the family's names. ``shift`` applies a domain
    shift after rendering, with its own random stream: the same ``seed`` with and without a shift
    gives the same scenes, so clean and shifted sets are paired. ``contrast``, ``noise`` and
    ``colour`` are a shorthand for ``shift=Shift(contrast, noise, colour)`` (the main job's
    ``data.contrast`` etc.); at their identity values there is no shift.
    """
    shorthand = Shift(contrast=contrast, noise=noise, colour=colour)
    if not shorthand.is_identity:
        if shift is not None:
            raise ValueError("pass either shift=Shift(...) or contrast/noise/colour, not both.")
        shift = shorthand
    _check_size(size)
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}.")
    names, allowed = _family_ids(family, textures)
    if regions[1] > len(allowed):
        raise ValueError(f"regions {regions} asks for more regions than the {len(allowed)} textures allowed.")
    g = torch.Generator().manual_seed(seed)
    region, counts = voronoi_regions(num_images, size, regions, g)  # (I, H, W), (I,)
    pick = allowed[torch.rand(num_images, len(allowed), generator=g).argsort(1)[:, : regions[1]]]  # (I, R)
    images = torch.zeros(num_images, 3, size, size)
    for tid, name in enumerate(names):
        img_i, reg_k = torch.nonzero(
            (pick == tid) & (torch.arange(regions[1]) < counts.view(-1, 1)), as_tuple=True
        )
        if len(img_i) == 0:
            continue
        inside = (region[img_i] == reg_k.view(-1, 1, 1)).unsqueeze(1)  # (n, 1, H, W)
        images.index_add_(0, img_i, inside * _render(name, len(img_i), size, size, g))
    masks = torch.gather(pick, 1, region.view(num_images, -1)).view_as(region)  # (I, H, W) texture ids
    if shift is not None:
        images = shift.apply(images, seed)
    meta = {"generator": "texture_mosaics", "family": family, "regions": tuple(regions), "size": size}
    meta |= {"textures": [names[int(t)] for t in allowed], "seed": seed, "shift": _shift_meta(shift)}
    return ImageSet(images, masks, None, [], list(names), None, f"textures-{family}", meta)


def texture_patches(
    num_per_class: int = 200,
    size: int = 32,
    family: str = "A",
    shift: Shift | None = None,
    seed: int = 0,
    textures: Sequence[str] | None = None,
) -> ImageSet:
    """Whole-patch textures for classifier training: ``(I, 3, size, size)`` with ``targets`` = texture id.

    ``num_per_class`` instances of each texture, in a seeded random order; ids and ``class_names``
    follow ``TEXTURE_FAMILIES[family]``. ``masks`` are the target broadcast over the patch. A different
    ``seed`` gives fresh instances (a held-out test set); ``textures`` restricts the classes (ids stay
    the family's).
    """
    _check_size(size)
    if num_per_class < 1:
        raise ValueError(f"num_per_class must be >= 1, got {num_per_class}.")
    names, allowed = _family_ids(family, textures)
    g = torch.Generator().manual_seed(seed)
    parts = [_render(names[int(t)], num_per_class, size, size, g) for t in allowed]
    targets = allowed.repeat_interleave(num_per_class)  # (I,)
    order = torch.randperm(len(targets), generator=g)
    images, targets = torch.cat(parts)[order], targets[order]
    masks = targets.view(-1, 1, 1).expand(-1, size, size).clone()  # (I, H, W)
    if shift is not None:
        images = shift.apply(images, seed)
    meta = {"generator": "texture_patches", "family": family, "size": size, "seed": seed}
    meta["shift"] = _shift_meta(shift)
    meta["textures"] = [names[int(t)] for t in allowed]
    return ImageSet(images, masks, targets, [], list(names), list(names), f"texture_patches-{family}", meta)
