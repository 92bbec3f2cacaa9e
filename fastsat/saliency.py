"""Teacher saliency for datasets without boxes or masks (CIFAR): signs of attribution maps.

Every method maps (model, x in [0, 1] NCHW, labels) → ``positive`` bool, True ⇔ s = +1, for the
ground-truth class; element granularity (N, H, W, C) or pixel granularity (N, H, W).

| method             | granularity | source                                                           |
|--------------------|-------------|------------------------------------------------------------------|
| grad_sign          | element     | sign(∂Φ_y/∂x), plain autograd (what the SAT reference code ran)  |
| gbp                | element     | captum GuidedBackprop (true guided backprop: hooks nn.ReLU)      |
| smoothgrad         | element     | captum NoiseTunnel(Saliency(abs=False)): mean gradient, noisy x  |
| ig                 | element     | captum IntegratedGradients from a black baseline                 |
| gradcam_pp_box     | pixel       | in-house batched Grad-CAM++ → threshold → peak region's box      |
| guided_gradcam_pp  | element     | GBP × upsampled Grad-CAM++                                       |

Grad-CAM++ is written here (captum has Grad-CAM, not ++; batched in torch, ~20 lines). Guided
backprop needs non-inplace ReLU *modules*: the teacher is copied and its ReLUs made non-inplace
(timm's are inplace, and functional ReLUs would silently turn GBP into the plain gradient).

Tie rule: a zero attribution has no sign; it is stored as s = +1 (bit 1), so an all-zero map is
all +1. Maps with NaN/Inf are an error naming the samples.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .batch import to_unit
from .errors import InputError
from .models import relu_not_inplace
from .registry import Registry


@dataclass(frozen=True)
class Param:
    """A method parameter: its default (which also fixes its type) and its valid closed range."""
    default: float
    lo: float | None = None
    hi: float | None = None

    def parse(self, key: str, text) -> float:
        kind = type(self.default)
        try:
            value = kind(text) if not isinstance(text, str) or kind is float else int(text, 10)
        except ValueError:
            raise InputError(f"saliency parameter {key}={text!r}: expected {kind.__name__}") from None
        if (self.lo is not None and value < self.lo) or (self.hi is not None and value > self.hi):
            span = f"[{self.lo if self.lo is not None else '-inf'}, {self.hi if self.hi is not None else 'inf'}]"
            raise InputError(f"saliency parameter {key}={value} is outside {span}")
        return value


@dataclass(frozen=True)
class SaliencyMethod:
    name: str
    fn: Callable  # (teacher, x (N, C, H, W) in [0, 1], y, **params) -> attribution, or bool signs
    granularity: str  # element (N, H, W, C) | pixel (N, H, W)
    description: str
    params: dict = field(default_factory=dict)  # name -> Param
    needs_teacher: bool = True  # False: computed from the images alone (``fn`` gets teacher None)

    def resolve(self, given: dict) -> dict:
        """Defaults overridden by ``given`` (strings or numbers), each checked; unknown keys refused."""
        unknown = sorted(set(given) - set(self.params))
        if unknown:
            raise InputError(f"{self.name} takes parameters {sorted(self.params) or 'none'}, not {unknown}")
        return {k: p.parse(k, given[k]) if k in given else p.default for k, p in self.params.items()}


SALIENCY: Registry[SaliencyMethod] = Registry("saliency method")


def register_saliency(name: str, *, granularity: str, description: str, params: dict | None = None,
                      needs_teacher: bool = True):
    def add(fn):
        SALIENCY.add(name, SaliencyMethod(name, fn, granularity, description, dict(params or {}), needs_teacher))
        return fn
    return add


def _need_captum():
    try:
        import captum.attr as attr
    except ImportError:
        raise InputError("this saliency method needs captum: pip install 'fastsat[saliency]'") from None
    return attr


class NonFiniteMap(InputError):
    """NaN/Inf in some samples' maps (``indices`` within the batch)."""

    def __init__(self, indices: list[int]):
        super().__init__(f"saliency map has NaN/Inf for samples {indices[:10]}")
        self.indices = indices


@register_saliency("grad_sign", granularity="element", description="sign of the plain input gradient of the label's logit")
def grad_sign(model, x, y):
    """∂Φ_y/∂x by autograd (Φ_y: the logit of the label)."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (grad,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x)
    return grad


@register_saliency("gbp", granularity="element", description="guided backprop (captum; non-inplace ReLU modules)")
def gbp(model, x, y):
    return _need_captum().GuidedBackprop(model).attribute(x, target=y)


@register_saliency("smoothgrad", granularity="element", description="SmoothGrad: mean gradient over noisy copies (captum)",
                   params={"samples": Param(16, 1), "sigma": Param(0.15, 0.0), "seed": Param(0, 0)})
def smoothgrad(model, x, y, samples, sigma, seed):
    attr = _need_captum()
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        torch.manual_seed(seed)  # NoiseTunnel draws from the global generator: fixed, then restored
        nt = attr.NoiseTunnel(attr.Saliency(model))
        return nt.attribute(x, nt_type="smoothgrad", nt_samples=samples, stdevs=sigma, target=y, abs=False)


@register_saliency("ig", granularity="element", description="integrated gradients from a black baseline (captum)",
                   params={"steps": Param(32, 1)})
def ig(model, x, y, steps):
    return _need_captum().IntegratedGradients(model).attribute(x, baselines=0.0, target=y, n_steps=steps)


def _last_stage(model: nn.Module) -> nn.Module:
    """The module whose output Grad-CAM++ weighs: timm ResNet's layer4, else the last Conv2d."""
    for m in model.modules():
        if hasattr(m, "layer4"):
            return m.layer4
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise InputError("Grad-CAM++ needs a convolutional teacher")
    return convs[-1]


def gradcam_pp(model, x, y) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhay et al. 2018) for class y, upsampled to x's size: (N, H, W) ≥ 0."""
    store = {}
    handle = _last_stage(model).register_forward_hook(lambda m, i, o: store.__setitem__("a", o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    a = store["a"]  # (N, K, h, w)
    (g,) = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), a)
    g2, g3 = g.pow(2), g.pow(3)
    denom = 2 * g2 + a.sum((2, 3), keepdim=True) * g3  # exp-score closed form of the 2nd/3rd derivatives
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    weights = (alpha * F.relu(g)).sum((2, 3), keepdim=True)
    cam = F.relu((weights * a).sum(1, keepdim=True))
    return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].detach()


def cam_box(cam: torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """(N, H, W) maps → (N, H, W) bool: Eq. 10 on the box around a connected region ≥ threshold·max:
    the one holding the map's peak (so the box always contains the strongest evidence; where
    several regions tie at the peak, the largest of them). A map that is zero everywhere gives the
    whole image (nothing to localise)."""
    from scipy import ndimage

    cam = cam.float().cpu().numpy()
    out = np.zeros(cam.shape, dtype=bool)
    for i, m in enumerate(cam):
        peak = m.max()
        if peak <= 0:
            out[i] = True
            continue
        regions, count = ndimage.label(m >= threshold * peak)
        sizes = ndimage.sum_labels(np.ones_like(m), regions, index=np.arange(1, count + 1))
        at_peak = np.unique(regions[m == peak])
        rows, cols = np.nonzero(regions == at_peak[np.argmax(sizes[at_peak - 1])])
        out[i, rows.min():rows.max() + 1, cols.min():cols.max() + 1] = True
    return out


@register_saliency("gradcam_pp_box", granularity="pixel", description="box around the peak region of Grad-CAM++ (Eq. 10)",
                   params={"threshold": Param(0.5, 0.0, 1.0)})
def gradcam_pp_box(model, x, y, threshold):
    """Already signs: (N, H, W) bool, True inside the box."""
    return torch.from_numpy(cam_box(gradcam_pp(model, x, y), threshold))


@register_saliency("guided_gradcam_pp", granularity="element", description="guided backprop × upsampled Grad-CAM++")
def guided_gradcam_pp(model, x, y):
    return gbp(model, x, y) * gradcam_pp(model, x, y)[:, None]


def signs(method: str, teacher, x, y, **params) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, all_zero) for one batch: positive (N, H, W, C) or (N, H, W) bool with the tie rule
    (0 → +1); all_zero (N,) marks maps with no sign at all. ``teacher`` from :func:`prepare_teacher`."""
    entry = SALIENCY.get(method)
    result = entry.fn(teacher, x, y, **entry.resolve(params))
    if result.dtype == torch.bool:
        return result, torch.zeros(len(result), dtype=torch.bool)
    flat = result.detach().flatten(1)
    bad = ~torch.isfinite(flat).all(1)
    if bad.any():
        raise NonFiniteMap(bad.nonzero().flatten().tolist())
    return (result >= 0).permute(0, 2, 3, 1), (flat == 0).all(1)


def prepare_teacher(model: nn.Module) -> nn.Module:
    """An eval-mode copy with non-inplace ReLU modules (hooks and guided backprop need them)."""
    return relu_not_inplace(copy.deepcopy(model)).eval()


def compute(method: str, teacher: nn.Module, images: np.ndarray, labels: np.ndarray, *, batch_size: int = 256,
            device: torch.device = torch.device("cpu"), params: dict | None = None, progress: bool = True):
    """Signs of ``method`` for uint8 (N, H, W, C) images, in batches on ``device``:
    ((N, H, W, C) or (N, H, W) bool, number of all-zero maps), numpy."""
    from tqdm import tqdm

    SALIENCY.get(method)  # unknown names fail before the teacher is copied
    teacher = None if teacher is None else prepare_teacher(teacher).to(device)
    out, zeros = [], 0
    for start in tqdm(range(0, len(images), batch_size), desc=f"saliency {method}", disable=not progress):
        batch = np.array(images[start:start + batch_size])  # a copy: the images may be read-only
        x = to_unit(torch.from_numpy(batch).to(device))
        y = torch.as_tensor(labels[start:start + batch_size], device=device).long()
        try:
            positive, all_zero = signs(method, teacher, x.contiguous(), y, **(params or {}))
        except NonFiniteMap as e:
            raise NonFiniteMap([start + i for i in e.indices]) from None
        out.append(positive.cpu().numpy())
        zeros += int(all_zero.sum())
    return np.concatenate(out), zeros


def grid(teacher, images: np.ndarray, labels: np.ndarray, methods, path, title: str = "") -> None:
    """PNG: each row a sample, its image, then each method's signs (white: s = +1, black: −1;
    element maps show the fraction of +1 channels), like the paper's Fig. 3. Any channel count."""
    from .plots import save, subplots

    maps = {m: compute(m, teacher, images, labels, batch_size=len(images), progress=False)[0] for m in methods}
    n, cols = len(images), 1 + len(methods)
    fig, axes = subplots(n, cols, figsize=(1.6 * cols, 1.6 * n), squeeze=False)
    for i in range(n):
        image = images[i][..., 0] if images.shape[-1] == 1 else images[i]
        axes[i, 0].imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        axes[i, 0].set_ylabel(str(labels[i]), fontsize=8)
        for j, m in enumerate(methods, 1):
            sign_map = maps[m][i]
            axes[i, j].imshow(sign_map.mean(-1) if sign_map.ndim == 3 else sign_map, cmap="gray", vmin=0, vmax=1)
    for j, name in enumerate(["image", *methods]):
        axes[0, j].set_title(name, fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    save(fig, path, dpi=110)
