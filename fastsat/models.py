"""timm ResNets for SAT: CIFAR-size stems registered with timm, normalization as the first layer.

Inputs to every model built here are pixels in [0, 1] (NCHW, channels_last welcome); mean/std are
applied inside, so attacks and the SAT kernel all work in pixel space [0, 1].
"""
from __future__ import annotations

import timm
import torch
from timm.models import register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

CIFAR_LAYERS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
WIDTH = (64, 128, 256, 512)  # channels of the four stages at width 1


DEFAULT_CFG = {  # timm's data config of the CIFAR-stem models: CIFAR-10's statistics, 32 px, no crop
    "input_size": (3, 32, 32), "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
    "num_classes": 10, "crop_pct": 1.0, "interpolation": "bilinear", "first_conv": "conv1", "classifier": "fc"}


def _as_dict(cfg) -> dict:
    return dict(cfg) if isinstance(cfg, dict) else cfg.to_dict() if hasattr(cfg, "to_dict") else {}


def _cifar_resnet(layers, width: float = 1.0, **kwargs) -> ResNet:
    """timm ResNet with a 3×3 stride-1 stem and no max-pool (keeps a 4×4 map at layer4 on 32 px).
    Its ``pretrained_cfg`` (what ``timm.data.resolve_data_config`` reads) is the default above with
    the model's channels, overlaid by ``pretrained_cfg_overlay`` (an exported model's own data config)."""
    overlay = {k: tuple(v) if isinstance(v, list) else v  # from JSON: timm's configs hold tuples
               for k, v in _as_dict(kwargs.pop("pretrained_cfg_overlay", None) or {}).items()}
    for key in ("pretrained", "pretrained_cfg", "cache_dir"):
        kwargs.pop(key, None)
    channels = tuple(max(8, int(round(c * width))) for c in WIDTH)
    model = ResNet(block=BasicBlock, layers=layers, channels=channels, stem_width=channels[0], **kwargs)
    in_chans = kwargs.get("in_chans", 3)
    model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, 3, 1, 1, bias=False)
    model.maxpool = nn.Identity()
    model.pretrained_cfg = model.default_cfg = {**DEFAULT_CFG, "input_size": (in_chans, 32, 32),
                                                "num_classes": model.num_classes, **overlay}
    return model


@register_model
def fastsat_resnet10_cifar(pretrained=False, **kwargs) -> ResNet:
    """ResNet-10 (BasicBlock 1-1-1-1), CIFAR stem: the paper's small teacher."""
    return _cifar_resnet(CIFAR_LAYERS["resnet10"], **kwargs)


@register_model
def fastsat_resnet18_cifar(pretrained=False, **kwargs) -> ResNet:
    """ResNet-18 (BasicBlock 2-2-2-2), CIFAR stem."""
    return _cifar_resnet(CIFAR_LAYERS["resnet18"], **kwargs)


@register_model
def fastsat_resnet34_cifar(pretrained=False, **kwargs) -> ResNet:
    """ResNet-34 (BasicBlock 3-4-6-3), CIFAR stem: the paper's large teacher."""
    return _cifar_resnet(CIFAR_LAYERS["resnet34"], **kwargs)


CIFAR_MODELS = ("fastsat_resnet10_cifar", "fastsat_resnet18_cifar", "fastsat_resnet34_cifar")


class Normalize(nn.Module):
    """(x − mean) / std per channel; the model's first layer, so callers stay in [0, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def timm_name(name: str) -> str:
    """The timm registry name of a model name: resnet10/18/34 → the fastsat CIFAR-stem ResNets."""
    return f"fastsat_{name}_cifar" if f"fastsat_{name}_cifar" in CIFAR_MODELS else name


def build_model(name: str, num_classes: int, mean, std, width: float = 1.0) -> nn.Sequential:
    """Normalize ∘ timm model; its input channels are ``len(mean)`` (1 for grayscale). ``width``
    scales the channels of the fastsat CIFAR ResNets."""
    name = timm_name(name)
    if not timm.is_model(name):
        raise ValueError(f"unknown model {name!r} (resnet10/18/34 or a timm model name)")
    if name not in CIFAR_MODELS and width != 1.0:
        raise ValueError(f"width applies to {CIFAR_MODELS} only, not {name}")
    net = timm.create_model(name, num_classes=num_classes, in_chans=len(mean),
                            **({"width": width} if name in CIFAR_MODELS else {}))
    return nn.Sequential(Normalize(mean, std), net)


def relu_not_inplace(model: nn.Module) -> nn.Module:
    """Turn every nn.ReLU non-inplace (backward hooks, guided backprop need it)."""
    for m in model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    return model
