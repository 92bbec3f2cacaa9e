"""Oxford Flowers-17: ``jpg/image_XXXX.jpg`` (class = (XXXX − 1) // 80), segmentation trimaps
``trimaps/image_XXXX.png`` (a subset of the images), splits in ``datasplits.mat`` (trn/val/tst 1–3).

Eq. 10: s = +1 on the flower, where the trimap is ≥ 128 (its 255 foreground and, counted as flower,
its grey boundary band), −1 elsewhere. Images and trimaps are resized to side×side together
(bilinear / nearest). Images without a trimap are skipped, or with ``missing_mask='keep'`` written
with all-zero bits and ``has_sal = 0`` (a field of its own); the loaders then feed them random
bits, i.e. SAT noise (``fastsat/data.py``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .common import InputError, Source, eq10_mask, load_pair, load_rgb, register_layout, require

CLASSES = ["daffodil", "snowdrop", "lily valley", "bluebell", "crocus", "iris", "tigerlily", "tulip",
           "fritillary", "sunflower", "daisy", "colts' foot", "dandelion", "cowslip", "buttercup",
           "windflower", "pansy"]
PER_CLASS = 80
SPLIT_KEYS = {"train": "trn", "val": "val", "test": "tst"}
FOREGROUND = 128  # trimap value from which a pixel counts as flower


@register_layout("flowers17", splits=tuple(SPLIT_KEYS), weak=("mask",),
                 options={"root": None, "side": 64, "fold": 1, "missing_mask": "skip"},
                 description="Oxford Flowers-17 jpg/ + trimaps/ + datasplits.mat")
class Flowers17:
    def __init__(self, root: Path, split: str = "train", side: int = 64, fold: int = 1,
                 missing_mask: str = "skip"):
        if fold not in (1, 2, 3):
            raise InputError(f"flowers17 has folds 1, 2, 3, not {fold}")
        if missing_mask not in ("skip", "keep"):
            raise InputError(f"missing_mask must be 'skip' or 'keep', not {missing_mask!r}")
        from scipy.io import loadmat

        base = Path(root)
        require(base / "jpg", "flowers17 image folder")
        splits_file = require(base / "datasplits.mat", "flowers17 split file")
        try:
            ids = np.asarray(loadmat(splits_file)[f"{SPLIT_KEYS[split]}{fold}"]).ravel().astype(int)
        except (KeyError, ValueError, OSError) as e:
            raise InputError(f"{splits_file}: no '{SPLIT_KEYS[split]}{fold}' index list ({e})") from None
        self.side = side
        self.items: list[tuple[Path, int, Path | None]] = []
        missing = []
        for k in sorted(ids):
            if not 1 <= k <= PER_CLASS * len(CLASSES):
                raise InputError(f"{splits_file}: image index {k} outside 1..{PER_CLASS * len(CLASSES)}")
            image = require(base / "jpg" / f"image_{k:04d}.jpg", "image")
            mask = base / "trimaps" / f"image_{k:04d}.png"
            if not mask.exists():
                missing.append(image.name)
                if missing_mask == "skip":
                    continue
                mask = None
            self.items.append((image, (k - 1) // PER_CLASS, mask))
        self.keep_unmasked = missing_mask == "keep"
        notes = []
        if missing:
            verb = "skipped" if missing_mask == "skip" else "written without saliency (has_sal = 0)"
            notes.append(f"{len(missing)} images without a trimap {verb}: {', '.join(missing[:5])}"
                         + (" ..." if len(missing) > 5 else ""))
        self.source = Source("flowers17", f"{split}{fold}", CLASSES, (side, side, 3), "mask", notes)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image_path, label, mask_path = self.items[i]
        if mask_path is None:
            return load_rgb(image_path, self.side), label, np.zeros((self.side, self.side), dtype=bool), 0
        image, trimap = load_pair(image_path, mask_path, self.side)
        positive = eq10_mask(trimap >= FOREGROUND, image.shape[:2])
        return (image, label, positive, 1) if self.keep_unmasked else (image, label, positive)
