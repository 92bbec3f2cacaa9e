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
from .kernels.spec import EPS0


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


class SampleSeeds:
    """A generator of one random stream per sample: sample i's draws come from ``seeds[i]`` alone,
    so an attack's outcome on a sample does not depend on which samples share its batch (an
    evaluation that attacks only some samples gives each the numbers it gets among all)."""

    def __init__(self, seeds):
        self.seeds = [int(s) for s in seeds]

    def draw(self, fn, x):
        """``fn`` (torch.rand or torch.randn) shaped like ``x``, one sample per seed."""
        if len(self.seeds) != len(x):
            raise ValueError(f"{len(self.seeds)} sample seeds for a batch of {len(x)}")
        rows = [fn(tuple(x.shape[1:]), generator=torch.Generator().manual_seed(s), dtype=x.dtype) for s in self.seeds]
        return torch.stack(rows).to(x.device)


def _random(fn, x, generator=None):
    """``fn(x.shape)`` from a torch.Generator (one stream per batch) or ``SampleSeeds``."""
    if isinstance(generator, SampleSeeds):
        return generator.draw(fn, x)
    return fn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def _uniform(x, eps, generator=None):
    return (_random(torch.rand, x, generator) * 2 - 1) * eps


@dataclass
class PGD(Attack):
    """L∞ PGD (Madry et al.): k signed-gradient steps of size alpha on CE, projected to the ε-ball."""
    eps: float = EPS0
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
    eps: float = EPS0
    alpha_ratio: float = 1.25
    eval_mode: bool = False

    def perturb(self, model, x, y, generator=None):
        delta = torch.max(torch.min(_uniform(x, self.eps, generator), 1 - x), -x).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + delta).float(), y), delta)
        delta = (delta.detach() + self.alpha_ratio * self.eps * grad.sign()).clamp(-self.eps, self.eps)
        return (x + delta).clamp(0, 1)


@dataclass
class NFGSM(Attack):
    """N-FGSM (de Jorge et al. 2022): noise η ~ U(−kε, kε) kept inside [−x, 1 − x], one step of
    alpha_ratio·ε on the gradient at x + η, and **no projection** back to the ε-ball (the
    perturbation may reach (k + 1)·ε): two passes like FGSM-RS, without its catastrophic
    overfitting at large ε. Train mode, as in the paper."""
    eps: float = EPS0
    k: float = 2.0
    alpha_ratio: float = 1.0
    eval_mode: bool = False

    def perturb(self, model, x, y, generator=None):
        eta = torch.max(torch.min(_uniform(x, self.k * self.eps, generator), 1 - x), -x).requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x + eta).float(), y), eta)
        return (x + eta.detach() + self.alpha_ratio * self.eps * grad.sign()).clamp(0, 1)


@dataclass
class TradesAttack(Attack):
    """TRADES inner maximisation (Zhang et al. 2019): ascend KL(f(x') ‖ f(x)) from x + 0.001·N(0, 1)."""
    eps: float = EPS0
    alpha: float = 2 / 255
    steps: int = 5
    eval_mode: bool = True

    def perturb(self, model, x, y=None, generator=None):
        with torch.no_grad():
            p_clean = F.softmax(model(x).float(), dim=1)
        noise = _random(torch.randn, x, generator)
        x_adv = (x + 0.001 * noise).clamp(0, 1)
        kl = lambda logits: F.kl_div(F.log_softmax(logits, dim=1), p_clean, reduction="sum")  # noqa: E731
        return _ascend(model, x, x_adv, kl, self.eps, self.alpha, self.steps)


@dataclass
class UniformNoise(Attack):
    """x + U(−ε, ε), clipped: the random-noise baseline and evaluation."""
    eps: float = EPS0

    def perturb(self, model, x, y=None, generator=None):
        return (x + _uniform(x, self.eps, generator)).clamp(0, 1)


@dataclass
class SaliencyAttack(Attack):
    """The paper's saliency attack, white-box on the evaluated model: x − ε·sign(∇ₓ Φ^y(x)),
    Φ^y the logit of the true class (one gradient, no random start), clipped to [0, 1]."""
    eps: float = EPS0

    def perturb(self, model, x, y, generator=None):
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(x).float().gather(1, y[:, None]).sum(), x)
        return (x.detach() - self.eps * grad.sign()).clamp(0, 1)


@dataclass
class StoredMapAttack(Attack):
    """x − ε·s with the signs s stored in the beton (``signs`` NCHW ±1): a transfer attack from
    whatever made the map (a teacher, a mask), blind to the evaluated model."""
    eps: float = EPS0

    def perturb(self, model, x, y=None, signs=None, generator=None):
        if signs is None:
            raise ValueError("StoredMapAttack needs the saliency signs of the batch")
        return (x - self.eps * signs).clamp(0, 1)


AA_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square")
AA_VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "rand": ("apgd-ce", "apgd-dlr")}
AA_IMPLS = ("pyautoattack", "torchattacks")
EOT_ITER = 20  # AutoAttack's rand version: gradients averaged over 20 draws of the model's randomness


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose gradient is made contiguous NCHW: a channels_last model returns channels_last
    input gradients, on which both AutoAttack implementations call ``.view()``."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


class AttackView(torch.nn.Module):
    """``model`` as third-party attacks need it: contiguous NCHW inputs and input gradients, whatever
    memory format the model computes in."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(_ContiguousGrad.apply(x))


@dataclass
class AutoAttack(Attack):
    """AutoAttack (Croce & Hein 2020): each attack runs on the samples the previous ones left
    correct (per-sample worst case).

    ``impl="pyautoattack"`` (default): the reference implementation (fra31/auto-attack, packaged as
    pyautoattack), ``standard`` = APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5000
    queries), 100 iterations each; ``rand`` = APGD-CE and APGD-DLR with 20-sample EOT, for randomised
    models. ``impl="torchattacks"``: the same list built from torchattacks' components (its own
    ``AutoAttack`` class uses 10 iterations: ``steps=10`` reproduces it). Or any tuple of
    ``AA_ATTACKS``. ``steps`` / ``queries`` below the original's are a cheaper, weaker attack, stated
    in every report."""
    eps: float = EPS0
    version: str = "standard"
    n_classes: int = 10
    steps: int = 100
    queries: int = 5000
    seed: int = 0
    impl: str = "pyautoattack"

    def components(self) -> tuple:
        names = AA_VERSIONS.get(self.version) or tuple(a for a in self.version.split(",") if a)
        unknown = [a for a in names if a not in AA_ATTACKS]
        if unknown or not names:
            raise ValueError(f"AutoAttack version {self.version!r}: expected standard, rand or a list of "
                             f"{', '.join(AA_ATTACKS)}")
        if self.impl not in AA_IMPLS:
            raise ValueError(f"AutoAttack implementation {self.impl!r}: expected one of {', '.join(AA_IMPLS)}")
        return names

    def perturb(self, model, x, y, generator=None):
        view, x = AttackView(model), x.contiguous()
        if self.impl == "torchattacks":
            return self._torchattacks(view, x, y)
        return self._reference(view, x, y)

    def _reference(self, model, x, y):
        aa = reference_autoattack(model, self.eps, self.seed, x.device, self.version, self.components())
        targets = max(1, min(9, self.n_classes - 1))
        aa.apgd.n_iter = aa.apgd_targeted.n_iter = aa.fab.n_iter = self.steps
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = targets
        aa.square.n_queries = self.queries
        x_adv, _ = aa.run_standard_evaluation(x, y, batch_size=len(x))
        return x_adv

    def _torchattacks(self, model, x, y):
        require_impl("torchattacks")
        import torchattacks as ta

        eot = EOT_ITER if self.version == "rand" else 1
        common = {"eps": self.eps, "norm": "Linf", "seed": self.seed}
        build = {
            "apgd-ce": lambda: ta.APGD(model, steps=self.steps, loss="ce", eot_iter=eot, n_restarts=1, **common),
            "apgd-dlr": lambda: ta.APGD(model, steps=self.steps, loss="dlr", eot_iter=eot, n_restarts=1, **common),
            "apgd-t": lambda: ta.APGDT(model, steps=self.steps, n_classes=self.n_classes, n_restarts=1, **common),
            "fab-t": lambda: ta.FAB(model, steps=self.steps, multi_targeted=True, n_classes=self.n_classes,
                                    n_restarts=1, **common),
            "square": lambda: ta.Square(model, n_queries=self.queries, n_restarts=1, **common),
        }
        attacks = [build[name]() for name in self.components()]
        return ta.MultiAttack(attacks)(x, y) if len(attacks) > 1 else attacks[0](x, y)


def reference_autoattack(model, eps: float, seed: int, device, version: str, attacks: tuple):
    """pyautoattack's ``AutoAttack`` (the packaged fra31/auto-attack), quiet: its own ``standard`` /
    ``rand`` settings, or ``attacks`` with the standard version's restarts (one each)."""
    import logging

    require_impl("pyautoattack")
    from pyautoattack import AutoAttack as Reference

    logging.getLogger("auto-attack").setLevel(logging.ERROR)  # its own checks: fastsat runs stricter ones
    common = {"device": device, "eps": eps, "norm": "Linf", "seed": seed}
    if version in AA_VERSIONS:
        aa = Reference(model, version=version, **common)
    else:
        aa = Reference(model, attacks=list(attacks), version="custom", **common)
        aa.apgd.n_restarts = aa.fab.n_restarts = 1
    aa.verbose = False
    return aa


INSTALL = {"pyautoattack": "pip install pyautoattack==0.2.0",
           "torchattacks": "pip install --no-deps torchattacks==3.5.1"}


def require_impl(impl: str) -> None:
    """A one-line error, before any work, when the AutoAttack implementation is not installed."""
    import importlib.util

    try:
        found = importlib.util.find_spec(impl) is not None
    except ValueError:  # in sys.modules as None: imports of it fail
        found = False
    if not found:
        raise InputError(f"AutoAttack by {impl} needs the package {impl} (scripts/install.sh installs it; or "
                         f"{INSTALL[impl]}), or another --eval-aa-impl, or --eval-aa none")


def aa_package(impl: str) -> str:
    """The package and version that computed an AutoAttack row, for reports."""
    try:
        from importlib.metadata import version

        return f"{impl} {version(impl)}"
    except Exception:  # noqa: BLE001 - not installed: the run would have failed before reporting
        return f"{impl} (version unknown)"
