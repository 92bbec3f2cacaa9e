"""What every writer shares: the sample contract, Eq. 10 (weak saliency), image files, errors.

A writer is a sequence of samples ``(image, label, positive)``:
  image    (H, W, C) uint8 (C = 3, or 1 for grayscale), the exact bytes the beton stores;
  label    int;
  positive (H, W) bool, True ⇔ s = +1 (Eq. 10: inside the box / mask), or None (no saliency).
Every sample of one writer has the same image shape. Writers read the datasets' official layouts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..errors import InputError
from ..registry import Registry

OPTIONS = {  # every option a layout may take: its flag's help
    "root": "folder holding the dataset's official layout",
    "side": "resize images (and masks / boxes) to SIDE x SIDE pixels",
    "fold": "split fold (flowers17: 1-3)",
    "missing_mask": "images without a mask: skip them, or keep them with has_sal = 0 (random SAT bits)",
    "mask_root": "parallel tree of masks <class>/<stem>.png (folder layout)",
}


WEAK_KINDS = ("bbox", "mask")  # where a layout's Eq. 10 signs come from


@dataclass(frozen=True)
class Layout:
    name: str
    factory: Callable  # (split=..., **options) -> sample sequence with .source
    description: str
    splits: tuple  # the split names --split takes for it
    weak: tuple  # Eq. 10 saliency the layout carries (of WEAK_KINDS); "none" is always possible
    options: dict  # option -> default (None: required where the layout needs it)


LAYOUTS: Registry[Layout] = Registry("dataset")


def register_layout(name: str, *, description: str, splits: tuple, weak: tuple = (), options: dict | None = None):
    """Register a sample-sequence factory ``factory(split, **options)`` for ``--dataset name``;
    ``open_writer`` checks the split and the options before calling it."""
    unknown = set(options or {}) - set(OPTIONS)
    if unknown:
        raise ValueError(f"layout {name}: unknown options {sorted(unknown)}")
    if not splits or set(weak) - set(WEAK_KINDS):
        raise ValueError(f"layout {name}: needs splits, and weak kinds among {WEAK_KINDS}")

    def add(factory):
        LAYOUTS.add(name, Layout(name, factory, description, tuple(splits), tuple(weak), dict(options or {})))
        return factory
    return add


@dataclass
class Source:
    """Metadata of a writer's sample sequence (the manifest records it)."""
    dataset: str
    split: str
    class_names: list[str]
    image_shape: tuple[int, int, int]
    saliency: str = "none"  # none | bbox | mask: where the Eq. 10 signs come from
    notes: list[str] = field(default_factory=list)  # e.g. images skipped for a missing mask


def require(path: Path, what: str) -> Path:
    """``path`` if it exists, else an InputError naming the file the layout expects."""
    if not path.exists():
        raise InputError(f"{what} not found: expected {path}")
    return path


def eq10_box(h: int, w: int, box: tuple[int, int, int, int], where: str = "") -> np.ndarray:
    """Eq. 10 for a bounding box (x0, y0, x1, y1), inclusive pixel coordinates: (H, W) bool."""
    x0, y0, x1, y1 = box
    if not (0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h):
        raise InputError(f"{where}bbox {box} is empty or outside the {w}x{h} image")
    positive = np.zeros((h, w), dtype=bool)
    positive[y0:y1 + 1, x0:x1 + 1] = True
    return positive


def eq10_mask(mask: np.ndarray, shape: tuple[int, int], where: str = "") -> np.ndarray:
    """Eq. 10 for a segmentation mask: foreground (non-zero) ⇔ s = +1; (H, W) bool."""
    if mask.shape[:2] != tuple(shape):
        raise InputError(f"{where}mask is {mask.shape[1]}x{mask.shape[0]} but the image is {shape[1]}x{shape[0]}")
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return mask > 0


def _open(path: Path, what: str):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
        im.load()
        return im
    except Image.DecompressionBombError as e:  # PIL's guard against images that would fill memory
        raise InputError(f"{what} {path} is too large to decode safely: {e}") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"unreadable {what} {path}: {e}") from None


def load_rgb(path: Path, side: Optional[int] = None) -> np.ndarray:
    """Decode an image file to (H, W, 3) uint8, resized to side×side (bilinear) when given."""
    from PIL import Image

    im = _open(path, "image").convert("RGB")
    if side is not None and im.size != (side, side):
        im = im.resize((side, side), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8).copy()


def load_pair(image_path: Path, mask_path: Path, side: int) -> tuple[np.ndarray, np.ndarray]:
    """An image and its mask, checked to have the same size, resized together to side×side
    (image bilinear, mask nearest so labels stay labels): ((H, W, 3) uint8, (H, W) uint8)."""
    from PIL import Image

    image = _open(image_path, "image").convert("RGB")
    mask = _open(mask_path, "mask")
    if mask.size != image.size:
        raise InputError(f"mask {mask_path} is {mask.size[0]}x{mask.size[1]} but its image "
                         f"{image_path} is {image.size[0]}x{image.size[1]}")
    if image.size != (side, side):
        image = image.resize((side, side), Image.BILINEAR)
        mask = mask.resize((side, side), Image.NEAREST)
    arr = np.asarray(mask)
    return np.asarray(image, dtype=np.uint8).copy(), (arr.max(axis=2) if arr.ndim == 3 else arr)
