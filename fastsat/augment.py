"""Batched flip / translate applied *after* the SAT perturbation.

Clipping is elementwise, so perturbing first and transforming the perturbed batch equals
transforming image and saliency together: augmentation can never misalign the saliency.
Each sample draws its own flip and shift from ``generator``; the batch stays on its device.
"""
from __future__ import annotations

import torch


def flip_lr(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each (N, C, H, W) sample left–right with probability ½."""
    flip = torch.rand(x.shape[0], generator=generator, device=generator.device if generator else "cpu") < 0.5
    flip = flip.to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def translate(x: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Shift each sample by (dy, dx) ∈ [−pad, pad]², filling with reflected borders (random crop of
    the reflect-padded image, as in the usual CIFAR recipe)."""
    if pad == 0:
        return x
    n, c, h, w = x.shape
    dev = generator.device if generator else "cpu"
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=dev).to(x.device)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")  # (N, C, H+2p, W+2p)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device)).view(n, 1, h, 1).expand(n, c, h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device)).view(n, 1, 1, w).expand(n, c, h, w)
    return out.gather(3, cols).contiguous(memory_format=torch.channels_last)


def augment(x: torch.Tensor, pad: int = 0, flip: bool = True, generator: torch.Generator | None = None):
    """The training augmentation: random flip then random translation, per sample."""
    if flip:
        x = flip_lr(x, generator)
    return translate(x, pad, generator)
