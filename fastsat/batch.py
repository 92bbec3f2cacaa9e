"""One batch as loaders yield it, the one pixel conversion, and a training step's seed: what the
methods, attacks and saliency need of the data, without the loaders (``data.py``) behind it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .kernels.spec import derive_seed


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) uint8 → (N, C, H, W) float32 in [0, 1] (a view of NHWC memory: channels_last);
    float input is taken as already in [0, 1]. The one pixel conversion outside the SAT kernel (whose
    reference multiplies by float32(1/255), as its Triton version does)."""
    x = x.permute(0, 3, 1, 2)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


@dataclass
class Batch:
    """One batch as a loader yields it."""
    x: torch.Tensor  # (N, H, W, C) uint8 (or float in [0, 1])
    y: torch.Tensor  # (N,) int64
    bits: Optional[torch.Tensor] = None  # (N, nbytes) packed saliency signs (two maps: already mixed), or None
    granularity: str = "element"  # of ``bits``
    indices: Optional[torch.Tensor] = None  # beton index of each row, where the loader knows it

    def pixels(self) -> torch.Tensor:
        return to_unit(self.x)


def step_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """The seed of one training step: every draw of the step (map mix, Eq. 9, augmentation, attack
    starts) derives its own stream from it, by purpose."""
    return derive_seed(seed, "step", rank, epoch, step)
