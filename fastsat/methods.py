"""Training methods of the paper, registered by name; each turns one raw batch into a loss.

| method          | input of the CE loss                                              |
|-----------------|-------------------------------------------------------------------|
| standard        | clean                                                             |
| noise           | x + U(−ε₀, ε₀)                                                    |
| sat             | Eq. 9 + Algorithm 1 (fused kernel), then flip/translate           |
| sign            | x + ε·z, z = ±1 per element (Eq. 9 with P(random) = 1): the control |
| fgsm_rs         | FGSM from a random start, step 1.25ε (Wong et al. 2020)           |
| n_fgsm          | noise U(±kε), one unprojected FGSM step of ε (de Jorge et al. 2022) |
| pgd             | PGD-k, random start (Madry et al.)                                |
| trades          | CE(clean) + β·KL(f(x_adv) ‖ f(x)), TRADES attack (Zhang et al.)   |
| X_noise, X_sat  | hybrids: per batch a coin (``hybrid_p``) picks the cheap method, else X |

A method is a function ``(cfg, model, step) → (loss, logits)`` (a :class:`Step`: the loader's
``data.Batch`` with the step's P(random) and seed) registered with
:func:`register_method`; hybrids are built by :func:`register_hybrid` from two registered
methods and a coin. Settings come from the run's ``TrainConfig`` (one set of defaults).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .attacks import FGSMRS, NFGSM, PGD, TradesAttack, UniformNoise
from .augment import augment
from .batch import Batch
from .errors import InputError
from .kernels import bits as bitlayout
from .kernels.spec import derive_seed, random_prob
from .registry import Registry


@dataclass(frozen=True)
class Method:
    name: str
    loss: Callable  # (cfg, model, Step) -> (loss, logits the CE term saw)
    description: str
    needs_saliency: bool = False  # reads the beton's saliency field(s)
    single_step: bool = False  # one-step attack: watch for catastrophic overfitting (Wong et al. 2020)
    selection: str = "robust"  # holdout accuracy that picks its best epoch: robust (PGD) or clean


METHODS: Registry[Method] = Registry("training method")


def register_method(name: str, *, description: str, needs_saliency: bool = False, single_step: bool = False,
                    selection: str = "robust"):
    def add(fn):
        METHODS.add(name, Method(name, fn, description, needs_saliency, single_step, selection))
        return fn
    return add


def register_hybrid(name: str, strong: str, cheap: str) -> None:
    """``name``: per batch, ``cheap`` with probability ``cfg.hybrid_p``, else ``strong`` (the coin is
    the batch generator's first draw)."""
    s, c = METHODS.get(strong), METHODS.get(cheap)

    def loss(cfg, model, step):
        gen = step.draws("hybrid")
        coin = torch.rand(1, generator=gen, device=gen.device).item() < cfg.hybrid_p
        return (c if coin else s).loss(cfg, model, step)

    METHODS.add(name, Method(name, loss, f"per batch, {cheap} with probability hybrid_p, else {strong}",
                             s.needs_saliency or c.needs_saliency, s.single_step or c.single_step))


PAPER_EPOCHS = 100  # the paper's run, over which its Eq. 9 schedule decays α^t to 0.6^10


def p_random(cfg, epoch: int, step: int, steps: int) -> float:
    """Eq. 9's P(random) at ``step`` of the ``steps`` of ``epoch``. ``epoch`` schedule: the paper's
    formula as written, α^epoch. ``run``: the paper's 100 epochs of decay spread over this run's
    steps, α^(100·s/(S−1)) at global step s of S — from 1 at the first step to 0.6^10 at the last,
    whatever the epoch count or batch size."""
    if cfg.sat_schedule == "epoch":
        return random_prob(epoch, cfg.sat_alpha)
    total = cfg.epochs * steps
    return cfg.sat_alpha ** (PAPER_EPOCHS * (epoch * steps + step) / max(total - 1, 1))


@dataclass
class Step:
    """One training step: the loader's batch, Eq. 9's P(random) and the step's seed, and the batch's
    two views (clean or SAT), augmented."""
    batch: Batch
    p_random: float  # Eq. 9: probability that an element's sign is random
    seed: int  # of this step (``data.step_seed``): every draw below derives its own stream from it
    out_dtype: torch.dtype = torch.float32  # SAT kernel output

    @property
    def y(self) -> torch.Tensor:
        return self.batch.y

    def draws(self, purpose: str) -> torch.Generator:
        """A generator of its own for one purpose (augmentation, noise, attack starts, the hybrid
        coin): adding draws for one purpose never moves another's."""
        return torch.Generator(device=self.batch.x.device).manual_seed(derive_seed(self.seed, purpose))

    def clean(self, cfg) -> torch.Tensor:
        return augment(self.batch.pixels(), cfg.pad, cfg.flip, self.draws("augment"))

    def sat(self, cfg, p_random: Optional[float] = None) -> torch.Tensor:
        """Eq. 9 + Algorithm 1 on the stored signs, then flip/translate (perturb first: see augment.py).
        ``p_random=1`` ignores the signs: the random-sign control, on the same kernel."""
        from .kernels.sat import sat_perturb  # Triton loads only when a batch needs it

        p = self.p_random if p_random is None else p_random
        x, bits, granularity = self.batch.x, self.batch.bits, self.batch.granularity
        if bits is None and p < 1:
            raise InputError("this method needs a saliency field, and the batch has none")
        if bits is None:  # the signs are never read at P(random) = 1: any bits of the right size
            bits = torch.zeros((len(x), bitlayout.num_bytes(tuple(x.shape[1:]), "pixel")),
                               dtype=torch.uint8, device=x.device)
            granularity = "pixel"
        x = sat_perturb(x, bits, p=p, seed=derive_seed(self.seed, "sat"), granularity=granularity,
                        eps=cfg.fraction("eps"), out_dtype=self.out_dtype)
        return augment(x, cfg.pad, cfg.flip, self.draws("augment"))


def _ce(model, x, y, smoothing: float = 0.0):
    logits = model(x)
    return F.cross_entropy(logits, y, label_smoothing=smoothing), logits


@register_method("standard", description="clean images (the cost baseline)", selection="clean")
def standard(cfg, model, b: Step):
    return _ce(model, b.clean(cfg), b.y, cfg.label_smoothing)


@register_method("noise", description="x + U(−eps, eps) per element, clipped (same cost as standard)",
                 selection="clean")
def noise(cfg, model, b: Step):
    x = UniformNoise(cfg.fraction("eps"))(model, b.clean(cfg), b.y, generator=b.draws("noise"))
    return _ce(model, x, b.y, cfg.label_smoothing)


@register_method("sat", needs_saliency=True,
                 description="Eq. 9: stored saliency signs, each random with P(random) (sat_schedule; fused kernel)")
def sat(cfg, model, b: Step):
    return _ce(model, b.sat(cfg), b.y, cfg.label_smoothing)


@register_method("sign", description="x + eps·z, z = ±1 per element, clipped: Eq. 9 with P(random) = 1 on the "
                                     "same kernel, at SAT's cost — the control that separates the map from ±eps noise")
def sign(cfg, model, b: Step):
    return _ce(model, b.sat(cfg, p_random=1.0), b.y, cfg.label_smoothing)


@register_method("fgsm_rs", single_step=True,
                 description="FGSM from a random start, step 1.25·eps (Wong et al. 2020): 2 passes")
def fgsm_rs(cfg, model, b: Step):
    x = FGSMRS(cfg.fraction("eps"))(model, b.clean(cfg), b.y, generator=b.draws("attack"))
    return _ce(model, x, b.y, cfg.label_smoothing)


@register_method("n_fgsm", single_step=True,
                 description="N-FGSM (de Jorge et al. 2022): noise U(±nfgsm_k·eps), one unprojected step of eps: "
                             "2 passes")
def n_fgsm(cfg, model, b: Step):
    attack = NFGSM(cfg.fraction("eps"), cfg.nfgsm_k)
    return _ce(model, attack(model, b.clean(cfg), b.y, generator=b.draws("attack")), b.y, cfg.label_smoothing)


@register_method("pgd", description="PGD-pgd_steps from a random start (Madry et al.): pgd_steps + 1 passes")
def pgd(cfg, model, b: Step):
    x = b.clean(cfg)
    x = PGD(cfg.fraction("eps"), cfg.fraction("pgd_alpha"), cfg.pgd_steps)(model, x, b.y, generator=b.draws("attack"))
    return _ce(model, x, b.y, cfg.label_smoothing)


@register_method("trades", description="CE(clean) + trades_beta·KL(f(x_adv) ‖ f(x)) (Zhang et al. 2019)")
def trades(cfg, model, b: Step):
    x = b.clean(cfg)
    adv = TradesAttack(cfg.fraction("eps"), cfg.fraction("pgd_alpha"), cfg.pgd_steps)(model, x, b.y, generator=b.draws("attack"))
    logits = model(x).float()  # separate forward passes, as the TRADES reference (BatchNorm sees
    logits_adv = model(adv).float()  # the clean and the adversarial batch apart)
    kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
    return F.cross_entropy(logits, b.y, label_smoothing=cfg.label_smoothing) + cfg.trades_beta * kl, logits


for _strong in ("pgd", "trades"):
    for _cheap in ("noise", "sat"):
        register_hybrid(f"{_strong}_{_cheap}", _strong, _cheap)


def training_loss(cfg, model, batch: Batch, *, p_random: float, seed: int, out_dtype: torch.dtype = torch.float32):
    """(loss, logits) of one batch under ``cfg.method``; ``p_random`` is Eq. 9's P(random) (see
    :func:`p_random`), ``seed`` the step's; the logits are those the CE term saw (for the training
    accuracy)."""
    return METHODS.get(cfg.method).loss(cfg, model, Step(batch, p_random, seed, out_dtype))


def train_step(cfg, model, optimizer, batch: Batch, *, p_random: float, seed: int,
               scaler: torch.amp.GradScaler | None = None):
    """One optimizer step; AMP (float16 autocast + scaler, float16 SAT output) when ``scaler`` is
    given. Returns (loss, number of correct predictions), both detached device tensors (no sync)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    amp = scaler is not None
    with torch.autocast(device_type=batch.x.device.type, dtype=torch.float16, enabled=amp):
        loss, logits = training_loss(cfg, model, batch, p_random=p_random, seed=seed,
                                     out_dtype=torch.float16 if amp else torch.float32)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), (logits.detach().argmax(1) == batch.y).sum()
