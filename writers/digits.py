"""scikit-learn's handwritten digits (shipped inside the wheel): the embedded default data set.

1797 8×8 grey images (values 0–16) are upsampled to 32×32 (bilinear) and repeated to RGB; the
weak saliency is Eq. 10 on the ink mask (upsampled ink above a quarter of full scale). The
train/test split is fixed and stratified: 20% of each class, seed 0.
"""
from __future__ import annotations

import numpy as np

from .common import Source, register_layout

SIDE = 32
INK = 0.25  # fraction of full ink that counts as foreground


@register_layout("digits", splits=("train", "test"), weak=("mask",), options={"side": 32},
                 description="scikit-learn's handwritten digits (in its wheel; no download), ink mask")
class Digits:
    def __init__(self, split: str = "train", side: int = SIDE):
        import torch
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        data = load_digits()
        idx_train, idx_test = train_test_split(np.arange(len(data.target)), test_size=0.2,
                                               stratify=data.target, random_state=0)
        idx = np.sort(idx_train if split == "train" else idx_test)
        grey = torch.from_numpy(data.images[idx] / 16.0).float().unsqueeze(1)  # (N, 1, 8, 8) in [0, 1]
        up = torch.nn.functional.interpolate(grey, size=(side, side), mode="bilinear", align_corners=False)
        up = up.squeeze(1).clamp(0, 1).numpy()
        self.images = np.repeat((up * 255).round().astype(np.uint8)[..., None], 3, axis=3)  # (N, H, W, 3)
        self.masks = up > INK
        self.labels = data.target[idx].astype(np.int64)
        self.source = Source("digits", split, [str(d) for d in range(10)], (side, side, 3), "mask")

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i]), self.masks[i]
