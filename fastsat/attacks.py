"""Attacks with one explicit contract (torchattacks-style, without its string-eval wrappers).

``attack(model, x, y)``: x in [0, 1] (NCHW), returns a detached tensor in [0, 1]; the model is
put in eval mode for the attack (unless ``eval_mode=False``) and restored after. PGD returns its
last iterate, from a uniform random start in the ε-ball.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


class Attack:
    eval_mode: bool = True

    def __call__(self, model, x, y, **kwargs):
        was_training = model.training
        model.train(not self.eval_mode and was_training)
        try:
            with torch.enable_grad():
                adv = self.perturb(model, x.detach(), y, **kwargs)
        finally:
            model.train(was_training)
        return adv.detach()

    def perturb(self, model, x, y, **kwargs):  # pragma: no cover - interface
        raise NotImplementedError


def _project(x_adv, x, eps):
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)


def _ascend(model, x, x_adv, loss_fn, eps, alpha, steps):
    """``steps`` signed-gradient ascent steps of size alpha on loss_fn(model(x_adv)), projected to
    the ε-ball around x and to [0, 1]; returns the last iterate."""
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(model(x_adv).float()), x_adv)
        x_adv = _project(x_adv.detach() + alpha * grad.sign(), x, eps)
    return x_adv


def _uniform(x, eps, generator=None):
    return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * eps


@dataclass
class PGD(Attack):
    """L∞ PGD (Madry et al.): k signed-gradient steps of size alpha on CE, projected to the ε-ball."""
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 5
    random_start: bool = True
    eval_mode: bool = True

    def perturb(self, model, x, y, generator=None):
        x_adv = _project(x + _uniform(x, self.eps, generator), x, self.eps) if self.random_start else x.clone()
        return _ascend(model, x, x_adv, lambda logits: F.cross_entropy(logits, y), self.eps, self.alpha, self.steps)


@dataclass
class FGSMRS(Attack):
    """FGSM with random start (Wong et al. 2020): one step of alpha·ε from U(−ε, ε), clipped to the
    ε-ball. Run in train mode, as in the paper that introduced it."""
    eps: float = 8 / 255
    alpha_ratio: float = 1.25
    eval_mode: bool = False

    def perturb(self, model, x, y, generator=None):
        delta = _uniform(x, self.eps, generator).requires_grad_(True)
        loss = F.cross_entropy(model((x + delta).clamp(0, 1)).float(), y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta.detach() + self.alpha_ratio * self.eps * grad.sign()).clamp(-self.eps, self.eps)
        return (x + delta).clamp(0, 1)


@dataclass
class TradesAttack(Attack):
    """TRADES inner maximisation (Zhang et al. 2019): ascend KL(f(x') ‖ f(x)) from x + 0.001·N(0, 1)."""
    eps: float = 8 / 255
    alpha: float = 2 / 255
    steps: int = 5
    eval_mode: bool = True

    def perturb(self, model, x, y=None, generator=None):
        with torch.no_grad():
            p_clean = F.softmax(model(x).float(), dim=1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x_adv = (x + 0.001 * noise).clamp(0, 1)
        kl = lambda logits: F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")  # noqa: E731
        return _ascend(model, x, x_adv, kl, self.eps, self.alpha, self.steps)


@dataclass
class UniformNoise(Attack):
    """x + U(−ε, ε), clipped: the random-noise baseline and evaluation."""
    eps: float = 8 / 255

    def perturb(self, model, x, y=None, generator=None):
        return (x + _uniform(x, self.eps, generator)).clamp(0, 1)


@dataclass
class SaliencyAttack(Attack):
    """x − ε·s, clipped: the attack the stored saliency signs point to (``signs`` NCHW ±1)."""
    eps: float = 8 / 255

    def perturb(self, model, x, y=None, signs=None, generator=None):
        if signs is None:
            raise ValueError("SaliencyAttack needs the saliency signs of the batch")
        return (x - self.eps * signs).clamp(0, 1)
