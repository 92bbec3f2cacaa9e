"""Attacks with one explicit contract (torchattacks-style, without its string-eval wrappers).

``attack(model, x, y)``: x in [0, 1] (NCHW), returns a detached tensor in [0, 1]; the model is
put in eval mode for the attack (unless ``eval_mode=False``) and restored after. PGD returns its
last iterate, from a uniform random start in the ε-ball.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .errors import InputError


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
    """FGSM with random start (Wong et al. 2020): δ ~ U(−ε, ε) kept inside [−x, 1 − x], one step of
    alpha_ratio·ε on its gradient, clipped to the ε-ball and again to [−x, 1 − x] (as their code
    does, so no element starts outside the image range with a zero gradient). Train mode, as in
    the paper that introduced it."""
    eps: float = 8 / 255
    alpha_ratio: float = 1.25
    eval_mode: bool = False

    def perturb(self, model, x, y, generator=None):
        delta = torch.max(torch.min(_uniform(x, self.eps, generator), 1 - x), -x).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta).float(), y), delta)
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
    """The paper's saliency attack, white-box on the evaluated model: x − ε·sign(∇ₓ Φ^y(x)),
    Φ^y the logit of the true class (one gradient, no random start), clipped to [0, 1]."""
    eps: float = 8 / 255

    def perturb(self, model, x, y, generator=None):
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x).float().gather(1, y[:, None]).sum(), x)
        return (x.detach() - self.eps * grad.sign()).clamp(0, 1)


@dataclass
class StoredMapAttack(Attack):
    """x − ε·s with the signs s stored in the beton (``signs`` NCHW ±1): a transfer attack from
    whatever made the map (a teacher, a mask), blind to the evaluated model."""
    eps: float = 8 / 255

    def perturb(self, model, x, y=None, signs=None, generator=None):
        if signs is None:
            raise ValueError("StoredMapAttack needs the saliency signs of the batch")
        return (x - self.eps * signs).clamp(0, 1)


AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
AA_VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}


@dataclass
class AutoAttack(Attack):
    """AutoAttack (Croce & Hein 2020) from torchattacks' components, with the original's settings:
    each attack runs on the samples the previous ones left correct (per-sample worst case).

    ``standard``: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000 queries), 100
    iterations each, as fra31/auto-attack; torchattacks' own ``AutoAttack`` class builds the same
    list with 10 iterations (``steps=10`` reproduces it exactly). ``rand``: APGD-CE and APGD-DLR with
    20-sample EOT, for randomised models. Or any tuple of ``AA_ATTACKS``."""
    eps: float = 8 / 255
    version: str = "standard"
    n_classes: int = 10
    steps: int = 100
    queries: int = 5000
    seed: int = 0

    def components(self) -> tuple:
        names = AA_VERSIONS.get(self.version) or tuple(a for a in self.version.split(",") if a)
        unknown = [a for a in names if a not in AA_ATTACKS]
        if unknown or not names:
            raise ValueError(f"AutoAttack version {self.version!r}: expected standard, rand or a list of "
                             f"{', '.join(AA_ATTACKS)}")
        return names

    def _build(self, model, name):
        try:
            import torchattacks as ta
        except ImportError:
            raise InputError("AutoAttack needs torchattacks (scripts/install.sh installs it; "
                             "or pip install --no-deps torchattacks==3.5.1), or --eval-aa none") from None

        eot = 20 if self.version == "rand" else 1
        common = {"eps": self.eps, "norm": "Linf", "seed": self.seed}
        if name in ("apgd-ce", "apgd-dlr"):
            return ta.APGD(model, steps=self.steps, loss=name[5:], eot_iter=eot, n_restarts=1, **common)
        if name == "apgd-t":
            return ta.APGDT(model, steps=self.steps, n_classes=self.n_classes, n_restarts=1, **common)
        if name == "fab-t":
            return ta.FAB(model, steps=self.steps, multi_targeted=True, n_classes=self.n_classes, n_restarts=1,
                          **common)
        return ta.Square(model, n_queries=self.queries, n_restarts=1, **common)

    def perturb(self, model, x, y, generator=None):
        from torchattacks import MultiAttack

        attacks = [self._build(model, name) for name in self.components()]
        return MultiAttack(attacks)(x, y) if len(attacks) > 1 else attacks[0](x, y)
