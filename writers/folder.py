"""An ImageFolder tree (``root/<class>/<image>``) with an optional parallel mask tree
(``mask_root/<class>/<image stem>.png``, foreground = non-zero) → Eq. 10 per pixel."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from .common import InputError, Source, eq10_mask, load_pair, load_rgb, register_layout, require

EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


@register_layout("folder", splits=("train", "val", "test"), weak=("mask",), options={"root": None, "side": 64, "mask_root": None},
                 description="an ImageFolder tree root/<class>/<image>, optional parallel mask tree")
class ImageFolder:
    def __init__(self, root: Path, split: str = "train", side: int = 64, mask_root: Optional[Path] = None):
        base = require(Path(root), "image folder")
        classes = sorted(p.name for p in base.iterdir() if p.is_dir())
        if not classes:
            raise InputError(f"{base} has no class folders (expected {base}/<class>/<image>)")
        self.side = side
        self.mask_root = Path(mask_root) if mask_root else None
        if self.mask_root:
            require(self.mask_root, "mask folder")
        self.items = []
        for label, name in enumerate(classes):
            for path in sorted((base / name).iterdir()):
                if path.suffix.lower() in EXTENSIONS:
                    mask = None
                    if self.mask_root:
                        mask = require(self.mask_root / name / f"{path.stem}.png", "mask")
                    self.items.append((path, label, mask))
        if not self.items:
            raise InputError(f"{base} holds no images with extensions {sorted(EXTENSIONS)}")
        self.source = Source("folder", split, classes, (side, side, 3), "mask" if self.mask_root else "none")

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        path, label, mask_path = self.items[i]
        if mask_path is None:
            return load_rgb(path, self.side), label, None
        image, mask = load_pair(path, mask_path, self.side)
        return image, label, eq10_mask(mask, image.shape[:2])
