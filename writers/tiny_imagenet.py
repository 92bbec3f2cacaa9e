"""Tiny ImageNet (``tiny-imagenet-200/``) with its bounding boxes → Eq. 10 per-pixel saliency.

train: ``train/<wnid>/images/*.JPEG`` with ``train/<wnid>/<wnid>_boxes.txt`` (file x0 y0 x1 y1);
val:   ``val/images/*.JPEG`` with ``val/val_annotations.txt`` (file wnid x0 y0 x1 y1).
Boxes are inclusive pixel coordinates on the 64×64 images; with ``side`` they are scaled along.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from .common import InputError, Source, eq10_box, load_rgb, register_layout, require

NATIVE = 64


def _parse(path: Path, ncols: int) -> list[list[str]]:
    rows = []
    for k, line in enumerate(require(path, "annotation file").read_text().splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split()
        if len(cols) != ncols:
            raise InputError(f"{path}:{k}: expected {ncols} columns, got {len(cols)}")
        rows.append(cols)
    return rows


def _box(cols: list[str], where: str) -> tuple[int, int, int, int]:
    try:
        return tuple(int(v) for v in cols)  # type: ignore[return-value]
    except ValueError:
        raise InputError(f"{where}bbox {cols} is not four integers") from None


@register_layout("tiny-imagenet", splits=("train", "val"), weak=("bbox",), options={"root": None, "side": None},
                 description="tiny-imagenet-200/ with its boxes (train and val)")
class TinyImageNet:
    def __init__(self, root: Path, split: str = "train", side: Optional[int] = None):
        base = Path(root)
        if base.name != "tiny-imagenet-200":
            base = base / "tiny-imagenet-200"
        require(base, "tiny-imagenet folder")
        wnids = [w for w in require(base / "wnids.txt", "class list").read_text().split() if w]
        index = {w: i for i, w in enumerate(wnids)}
        words = {}
        if (base / "words.txt").exists():
            for line in (base / "words.txt").read_text().splitlines():
                wnid, _, name = line.partition("\t")
                words[wnid] = name.split(",")[0].strip()
        self.side = side or NATIVE
        self.items: list[tuple[Path, int, tuple[int, int, int, int]]] = []
        if split == "train":
            for wnid in wnids:
                for name, *box in _parse(base / "train" / wnid / f"{wnid}_boxes.txt", 5):
                    where = f"{base / 'train' / wnid / f'{wnid}_boxes.txt'}: {name}: "
                    self.items.append((base / "train" / wnid / "images" / name, index[wnid], _box(box, where)))
        else:
            for name, wnid, *box in _parse(base / "val" / "val_annotations.txt", 6):
                if wnid not in index:
                    raise InputError(f"{base / 'val' / 'val_annotations.txt'}: {name}: unknown wnid {wnid}")
                self.items.append((base / "val" / "images" / name, index[wnid], _box(box, f"{name}: ")))
        for path, _, box in self.items:  # fail before writing, not halfway through
            require(path, "image")
            eq10_box(NATIVE, NATIVE, box, f"{path}: ")
        names = [words.get(w, w) for w in wnids]
        self.source = Source("tiny-imagenet", split, names, (self.side, self.side, 3), "bbox")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label, (x0, y0, x1, y1) = self.items[i]
        image = load_rgb(path, self.side)
        s = self.side / NATIVE
        box = (math.floor(x0 * s), math.floor(y0 * s), math.ceil((x1 + 1) * s) - 1, math.ceil((y1 + 1) * s) - 1)
        return image, label, eq10_box(self.side, self.side, box, f"{path}: ")
