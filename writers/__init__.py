"""Dataset readers, one module per official on-disk layout; each yields (image, label, positive).

``open_writer(dataset, ...)`` builds one; ``SALIENCY`` says which weak saliency each layout has.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .common import InputError, Source

DATASETS = ("digits", "cifar10", "cifar100", "tiny-imagenet", "flowers17", "folder")
# weak (Eq. 10) saliency a layout carries; "none" is always possible
SALIENCY = {"digits": ("mask",), "cifar10": (), "cifar100": (), "tiny-imagenet": ("bbox",),
            "flowers17": ("mask",), "folder": ("mask",)}


def open_writer(dataset: str, root: Optional[Path] = None, split: str = "train", side: Optional[int] = None,
                fold: int = 1, missing_mask: str = "skip", mask_root: Optional[Path] = None):
    """The sample sequence for ``dataset`` (its ``.source`` describes it)."""
    if dataset not in DATASETS:
        raise InputError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if dataset != "digits" and root is None:
        raise InputError(f"--root is required for {dataset}")
    if root is not None and not Path(root).exists():
        raise InputError(f"root {root} does not exist")
    if dataset == "digits":
        from .digits import SIDE, Digits
        return Digits(split, side or SIDE)
    if dataset in ("cifar10", "cifar100"):
        from .cifar import Cifar
        if side not in (None, 32):
            raise InputError(f"{dataset} images are 32x32; resizing is not supported")
        return Cifar(Path(root), split, dataset)
    if dataset == "tiny-imagenet":
        from .tiny_imagenet import TinyImageNet
        return TinyImageNet(Path(root), split, side)
    if dataset == "flowers17":
        from .flowers17 import Flowers17
        return Flowers17(Path(root), split, side or 64, fold, missing_mask)
    from .folder import ImageFolder
    return ImageFolder(Path(root), split, side or 64, mask_root)


__all__ = ["DATASETS", "SALIENCY", "InputError", "Source", "open_writer"]
