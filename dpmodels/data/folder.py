"""A user's own images (and optional integer label masks) from a folder, as an ``ImageSet``.

Layout::

    root/images/<stem>.{png,jpg,jpeg,bmp,tif,tiff}   the images, taken in sorted file-name order
    root/masks/<stem>.png                            optional: one integer-label mask per image
    root/mask_names.txt                              optional: the name of label k on line k + 1

Images are read upright: a JPEG's (or TIFF's) EXIF orientation is applied, as photo viewers do, so
a mask drawn over the upright photo matches it. Mask label 255 means "ignore" (unlabelled pixels,
the convention of VOC-style masks): it becomes ``-1``, which evaluation skips; labels 0..254 are
regions.

Resize rules (the same for an image and its mask; masks use nearest neighbour, images bilinear
with antialiasing): ``"shorter_side_then_center_crop"`` scales the image so its shorter side is
``size`` (aspect kept), then cuts the central ``size`` x ``size`` square; ``"stretch"`` resizes
straight to ``size`` x ``size`` (aspect not kept).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from .images import ImageSet

__all__ = ["IGNORE_MASK_VALUE", "IMAGE_SUFFIXES", "RESIZE_RULES", "image_folder"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
RESIZE_RULES = ("shorter_side_then_center_crop", "stretch")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
IGNORE_MASK_VALUE = 255  # in mask files: unlabelled pixels, read as -1 (skipped by evaluation)


def _box(w: int, h: int, size: int, rule: str) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
    """The resized ``(width, height)`` and the crop box ``(left, top, right, bottom)`` for one image."""
    if rule == "stretch":
        return (size, size), (0, 0, size, size)
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    left, top = (nw - size) // 2, (nh - size) // 2
    return (nw, nh), (left, top, left + size, top + size)


def _to_8bit(im: Image.Image) -> Image.Image:
    """Convert a 16/32-bit integer or float grey image to 8-bit ``L`` (16-bit full scale = 65535)."""
    arr = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        full = 1.0
    elif im.mode.startswith("I;16"):
        full = 65535.0
    else:  # mode "I": 32-bit ints, read as 16-bit when any value exceeds 255, else 8-bit
        full = 65535.0 if arr.max() > 255 else 255.0
    arr = arr / full
    if arr.min() < 0 or arr.max() > 1:
        raise ValueError(
            f"pixel values span [{arr.min()}, {arr.max() * full}], beyond 16-bit or [0, 1] floats"
        )
    return Image.fromarray((arr * 255).round().astype(np.uint8), "L")


def _read_image(path: Path, size: int, rule: str, channels: int | str) -> np.ndarray:
    """One image as float32 ``(C, size, size)`` in ``[0, 1]``; ``C`` native under ``channels="auto"``.

    Grey modes (1, L, LA, I, F) give ``C = 1``, all others ``C = 3`` (alpha dropped, palettes expanded).
    """
    try:
        with Image.open(path) as raw:
            raw.load()
            im = ImageOps.exif_transpose(raw)  # upright, as a viewer shows it
            grey = im.mode in _GREY_MODES
            im = (
                _to_8bit(im)
                if im.mode.startswith("I") or im.mode == "F"
                else im.convert("L" if grey else "RGB")
            )
            if channels == 1 and not grey:
                im = im.convert("L")  # ITU-R 601-2 luma
            elif channels == 3 and grey:
                im = im.convert("RGB")
            (nw, nh), box = _box(im.width, im.height, size, rule)
            im = im.resize((nw, nh), Image.Resampling.BILINEAR).crop(box)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"cannot read image {path}: {err}. Check that the file is a valid image.") from err
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _upright_size(im: Image.Image) -> tuple[int, int]:
    """``(width, height)`` after the EXIF orientation (tags 5-8 swap the axes)."""
    orientation = im.getexif().get(0x0112, 1)
    return (im.height, im.width) if orientation in (5, 6, 7, 8) else im.size


def _read_mask(path: Path, image_path: Path, size: int, rule: str) -> np.ndarray:
    """One mask as int64 ``(size, size)`` labels, checked against its image's original size."""
    try:
        with Image.open(path) as m, Image.open(image_path) as im:
            m.load()
            m = ImageOps.exif_transpose(m)
            upright = _upright_size(im)
            if m.size != upright:
                raise ValueError(
                    f"mask {path.name} is {m.size[0]}x{m.size[1]} (WxH) but its image {image_path.name} is "
                    f"{upright[0]}x{upright[1]} (upright, after its EXIF orientation); a mask must have its "
                    "image's size."
                )
            if m.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
                raise ValueError(
                    f"mask {path.name} has mode {m.mode}; expected single-channel integer labels."
                )
            labels = np.asarray(m).astype(np.int64)
            labels[labels == IGNORE_MASK_VALUE] = -1
    except OSError as err:
        raise ValueError(f"cannot read mask {path}: {err}.") from err
    (nw, nh), box = _box(labels.shape[1], labels.shape[0], size, rule)
    resized = Image.fromarray(labels.astype(np.int32), "I").resize((nw, nh), Image.Resampling.NEAREST)
    return np.asarray(resized.crop(box)).astype(np.int64)


def image_folder(
    root: str | Path,
    size: int = 64,
    resize: str = "shorter_side_then_center_crop",
    channels: int | str | None = "auto",
    max_images: int | None = None,
    progress: bool = False,
    *,
    num_images: int | None = None,
) -> ImageSet:
    """Images ``(I, C, size, size)`` from ``root/images`` with masks from ``root/masks`` when present.

    ``channels``: 1 (luminance), 3 (grey replicated) or ``"auto"`` (or ``None``: the files' own; they
    must agree).
    Masks hold the stored integer labels (255 -> -1, ignored), resized by nearest neighbour with
    the same rule; either every image has a mask or none does. Images are turned upright by their
    EXIF orientation. ``num_images`` (or its older name ``max_images``) keeps the first files in name order;
    ``progress`` shows a progress bar while reading.
    """
    root = Path(root)
    if num_images is not None and max_images is not None and num_images != max_images:
        raise ValueError(
            f"num_images={num_images} and max_images={max_images} disagree; pass num_images only."
        )
    max_images = num_images if num_images is not None else max_images
    channels = "auto" if channels is None else channels
    if resize not in RESIZE_RULES:
        raise ValueError(f"resize must be one of {RESIZE_RULES}, got {resize!r}.")
    if channels not in ("auto", 1, 3):
        raise ValueError(f"channels must be 'auto', 1 or 3, got {channels!r}.")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}.")
    if not root.is_dir():
        raise FileNotFoundError(
            f"image folder {root} does not exist; expected root/images/*.png (and optional root/masks/)."
        )
    img_dir = root / "images"
    if not img_dir.is_dir():
        raise FileNotFoundError(f"{root} has no images/ folder; put the images in {img_dir}.")
    files = sorted(p for p in img_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{img_dir} holds no images with suffix {IMAGE_SUFFIXES}.")
    files = files[:max_images] if max_images is not None else files
    stems = [p.stem for p in files]
    dupes = sorted({s for s in stems if stems.count(s) > 1})
    if dupes:
        raise ValueError(
            f"several images share the stems {dupes} in {img_dir}; give each image its own name."
        )
    reading = tqdm(files, desc=f"reading {img_dir}", unit="image", disable=not progress)
    arrays = [_read_image(p, size, resize, channels) for p in reading]
    counts = {a.shape[0] for a in arrays}
    if len(counts) > 1:
        grey = [p.name for p, a in zip(files, arrays, strict=True) if a.shape[0] == 1]
        colour = [p.name for p, a in zip(files, arrays, strict=True) if a.shape[0] == 3]
        raise ValueError(
            f"mixed grayscale and colour images under channels='auto': grayscale {grey[:10]}, "
            f"colour {colour[:10]}; pass channels=3 (or channels=1) to convert them all."
        )
    images = torch.from_numpy(np.stack(arrays))  # (I, C, H, W)
    mask_dir, masks, mask_names = root / "masks", None, None
    if mask_dir.is_dir() and any(mask_dir.glob("*.png")):
        lacking = [p.name for p in files if not (mask_dir / f"{p.stem}.png").is_file()]
        if lacking:
            raise ValueError(
                f"{len(lacking)} of {len(files)} images have no mask in {mask_dir}: {lacking[:10]}; "
                "give every image a <stem>.png mask or remove masks/."
            )
        masks = torch.from_numpy(
            np.stack([_read_mask(mask_dir / f"{p.stem}.png", p, size, resize) for p in files])
        )
        names_file = root / "mask_names.txt"
        if names_file.is_file():
            mask_names = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
            if int(masks.max()) >= len(mask_names):
                raise ValueError(
                    f"{names_file} names {len(mask_names)} labels but the masks use label {int(masks.max())}."
                )
    meta = {"source": "folder", "root": str(root), "size": size, "resize": resize, "channels": channels}
    return ImageSet(images, masks, None, stems, mask_names, None, root.name or "folder", meta)
