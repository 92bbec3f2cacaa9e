"""MNIST-family IDX files (``fashion-mnist``, ``mnist``): 28×28 grayscale stored as (H, W, 1).

Reads the official ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
``t10k-*`` files from ``--root``: the folder they were downloaded to, a torchvision ``raw/``
folder, or (Fashion-MNIST, the default) the Debian package ``dataset-fashion-mnist``'s folder.
Magic numbers, dimensions and counts are checked. Weak saliency (Eq. 10): the product's
silhouette — pixels brighter than the black background (> ``BACKGROUND``), holes filled.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from .common import InputError, Source, register_layout

DEBIAN = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
TORCHVISION = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
CLASSES = {"fashion-mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                             "Bag", "Ankle boot"],
           "mnist": [str(d) for d in range(10)]}
MAGIC_IMAGES, MAGIC_LABELS = 0x00000803, 0x00000801
BACKGROUND = 0  # silhouette: pixel value > this (Fashion-MNIST's background is exactly 0)


def find(root: Path, dataset: str, name: str) -> Path:
    """``name`` or ``name.gz`` in root, root/raw or root/<TorchvisionName>/raw."""
    for folder in (root, root / "raw", root / TORCHVISION[dataset] / "raw"):
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    raise InputError(f"{dataset}: {name}[.gz] not found in {root} (nor in its raw/ or "
                     f"{TORCHVISION[dataset]}/raw/ folder)")


def read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    """An IDX file (big-endian header: magic, then one u32 per dimension; uint8 data)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise InputError(f"{path}: corrupted gzip ({e})") from None
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise InputError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise InputError(f"{path}: magic number {found:#010x}, expected {magic:#010x}")
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    size = int(np.prod(dims))
    if len(raw) - head != size:
        raise InputError(f"{path}: {len(raw) - head} data bytes for dimensions {dims} ({size} expected; truncated?)")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def silhouette(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 → (N, H, W) bool: brighter than the background, holes filled."""
    from scipy import ndimage

    fg = images > BACKGROUND
    return np.stack([ndimage.binary_fill_holes(m) for m in fg])


class Idx:
    def __init__(self, dataset: str, root: Path, split: str = "train"):
        images_file, labels_file = (find(Path(root), dataset, name) for name in FILES[split])
        images = read_idx(images_file, MAGIC_IMAGES, 3)
        labels = read_idx(labels_file, MAGIC_LABELS, 1)
        if len(images) != len(labels):
            raise InputError(f"{images_file} holds {len(images)} images but {labels_file} {len(labels)} labels")
        if labels.size and labels.max() >= len(CLASSES[dataset]):
            raise InputError(f"{labels_file}: label {labels.max()} outside the {len(CLASSES[dataset])} classes")
        self.images = images[..., None]  # (N, H, W, 1): one channel, as stored
        self.labels = labels.astype(np.int64)
        self.masks = silhouette(images)
        h, w = images.shape[1:]
        self.source = Source(dataset, split, CLASSES[dataset], (h, w, 1), "mask",
                             [f"mask: silhouette, pixels > {BACKGROUND} with holes filled"])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i]), self.masks[i]


@register_layout("fashion-mnist", splits=tuple(FILES), weak=("mask",), options={"root": DEBIAN["fashion-mnist"]},
                 description="Fashion-MNIST IDX files (default root: the Debian package dataset-fashion-mnist)")
def fashion_mnist(split: str, root: Path) -> Idx:
    return Idx("fashion-mnist", root, split)


@register_layout("mnist", splits=tuple(FILES), weak=("mask",), options={"root": None}, description="MNIST IDX files (ink mask)")
def mnist(split: str, root: Path) -> Idx:
    return Idx("mnist", root, split)
