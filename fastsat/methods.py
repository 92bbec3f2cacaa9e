"""Training methods of the paper, one loss per batch, all fed the loader's raw batch.

| method          | input of the CE loss                                              |
|-----------------|-------------------------------------------------------------------|
| standard        | clean                                                             |
| noise           | x + U(−ε₀, ε₀)                                                    |
| sat             | Eq. 9 + Algorithm 1 (fused kernel), then flip/translate          |
| fgsm_rs         | FGSM from a random start, step 1.25ε (Wong et al. 2020)            |
| pgd             | PGD-5, ε 8/255, step 2/255, random start (Madry et al.)           |
| trades          | CE(clean) + β·KL(f(x_adv) ‖ f(x)), TRADES attack (Zhang et al.)    |
| X_noise, X_sat  | per batch, a coin (``hybrid_p``): the noise / SAT batch, else X    |

TRADES β defaults to 6 (TRADES' own CIFAR setting, the one its robustness numbers use); the SAT
reference code ran β = 1, available as ``trades_beta=1``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .attacks import FGSMRS, PGD, TradesAttack, UniformNoise
from .augment import augment
from .kernels.sat import ALPHA, EPS0, random_prob, sat_perturb

METHODS = ("standard", "noise", "sat", "fgsm_rs", "pgd", "pgd_noise", "pgd_sat",
           "trades", "trades_noise", "trades_sat")
SALIENCY_METHODS = tuple(m for m in METHODS if m.endswith("sat"))


@dataclass
class MethodConfig:
    name: str = "sat"
    eps: float = EPS0  # ε₀ of SAT / noise / attacks in training, pixel units
    sat_alpha: float = ALPHA  # Eq. 9 decay: P(random) = sat_alpha ** epoch
    pgd_steps: int = 5
    pgd_alpha: float = 2 / 255  # pixel units
    trades_beta: float = 6.0
    hybrid_p: float = 0.5  # probability that a hybrid batch is the SAT / noise batch
    granularity: str = "element"  # of the saliency field
    flip: bool = True  # random left-right flip (after perturbation)
    pad: int = 0  # random translation by up to ±pad pixels (after perturbation)
    out_dtype: torch.dtype = torch.float32  # SAT kernel output

    def __post_init__(self):
        if self.name not in METHODS:
            raise ValueError(f"unknown method {self.name!r}; expected one of {', '.join(METHODS)}")
        if not 0.0 <= self.eps <= 1.0:
            raise ValueError(f"eps must be in [0, 1], got {self.eps}")
        if not 0.0 <= self.hybrid_p <= 1.0:
            raise ValueError(f"hybrid_p must be in [0, 1], got {self.hybrid_p}")

    @classmethod
    def from_config(cls, cfg, **overrides) -> "MethodConfig":
        """The method part of a run's config: every field both dataclasses share, by name."""
        shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls) if hasattr(cfg, f.name)}
        return cls(name=cfg.method, **{**shared, **overrides})

    @property
    def needs_saliency(self) -> bool:
        return self.name in SALIENCY_METHODS


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """(N, H, W, C) uint8 → (N, C, H, W) float32 in [0, 1], channels_last."""
    return x.permute(0, 3, 1, 2).float().div_(255) if x.dtype == torch.uint8 else x.permute(0, 3, 1, 2).float()


def mix_saliency(bits: torch.Tensor, bits2: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample coin between two packed maps of equal layout (paper Table 7)."""
    coin = torch.rand(bits.shape[0], generator=generator, device=generator.device) < 0.5
    return torch.where(coin.to(bits.device).view(-1, 1), bits, bits2)


def training_loss(cfg: MethodConfig, model, x, y, bits=None, *, epoch: int, seed: int):
    """(loss, logits) of one batch: ``x`` (N, H, W, C) uint8 or float, ``bits`` (N, nbytes) packed
    saliency; the logits are those the CE term saw (for the training accuracy)."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    base, _, extra = cfg.name.partition("_")
    if extra in ("noise", "sat") and base in ("pgd", "trades"):
        if torch.rand(1, generator=gen, device=x.device).item() < cfg.hybrid_p:
            base = extra  # this batch is the SAT / noise batch
    if base == "sat":
        if bits is None:
            raise ValueError(f"method {cfg.name} needs a saliency field")
        x_in = sat_perturb(x, bits, p=random_prob(epoch, cfg.sat_alpha), seed=seed, granularity=cfg.granularity,
                           eps=cfg.eps, out_dtype=cfg.out_dtype)
        x_in = augment(x_in, cfg.pad, cfg.flip, gen)
    else:
        x_in = augment(to_unit(x), cfg.pad, cfg.flip, gen)
    if base == "noise":
        x_in = UniformNoise(cfg.eps)(model, x_in, y, generator=gen)
    elif base == "fgsm":
        x_in = FGSMRS(cfg.eps)(model, x_in, y, generator=gen)
    elif base == "pgd":
        x_in = PGD(cfg.eps, cfg.pgd_alpha, cfg.pgd_steps)(model, x_in, y, generator=gen)
    elif base == "trades":
        adv = TradesAttack(cfg.eps, cfg.pgd_alpha, cfg.pgd_steps)(model, x_in, y, generator=gen)
        logits, logits_adv = model(torch.cat([x_in, adv])).float().chunk(2)
        kl = F.kl_div(F.log_softmax(logits_adv, 1), F.softmax(logits, 1), reduction="batchmean")
        return F.cross_entropy(logits, y) + cfg.trades_beta * kl, logits
    logits = model(x_in)
    return F.cross_entropy(logits, y), logits


def train_step(cfg: MethodConfig, model, optimizer, x, y, bits=None, *, epoch: int, seed: int,
               scaler: torch.amp.GradScaler | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; AMP (float16 autocast + scaler) when ``scaler`` is given.
    Returns (loss, number of correct predictions), both detached device tensors (no sync)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=x.device.type, dtype=torch.float16, enabled=scaler is not None):
        loss, logits = training_loss(cfg, model, x, y, bits, epoch=epoch, seed=seed)
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    return loss.detach(), (logits.detach().argmax(1) == y).sum()
