"""Global magnitude pruning: the paper's 95%-sparse teachers (``--init CKPT --sparsity 0.95``).

The smallest |w| across every conv and linear weight are zeroed once at the start, and kept at
zero after every optimizer step (``apply_masks``).
"""
from __future__ import annotations

import math

import torch


def prunable(model) -> list[torch.nn.Parameter]:
    """Weights that global magnitude pruning considers: every conv and linear weight."""
    return [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def magnitude_masks(model, sparsity: float) -> list[tuple[torch.nn.Parameter, torch.Tensor]]:
    """Zero the smallest |w| (a ``sparsity`` fraction of all prunable weights); returns the
    (weight, keep-mask) pairs, already applied."""
    weights = prunable(model)
    scores = torch.cat([w.detach().abs().flatten() for w in weights])
    k = math.ceil(sparsity * scores.numel())
    if k == 0:
        return []
    cut = torch.kthvalue(scores.cpu(), k).values.item()
    masks = [(w, w.detach().abs() > cut) for w in weights]
    apply_masks(masks)
    return masks


def apply_masks(masks) -> None:
    with torch.no_grad():
        for w, keep in masks:
            w.mul_(keep)


def measured_sparsity(model) -> float:
    weights = prunable(model)
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)
