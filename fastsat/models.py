"""timm ResNets for SAT: CIFAR-size stems registered with timm, normalization as the first layer.

Inputs to every model built here are pixels in [0, 1] (NCHW, channels_last welcome); mean/std are
applied inside, so attacks and the SAT kernel all work in pixel space [0, 1].
"""
from __future__ import annotations

import json
from functools import partial

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, ResNet
from torch import nn

CIFAR_LAYERS = {"resnet10": (1, 1, 1, 1), "resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
WIDTH = (64, 128, 256, 512)  # channels of the four stages at width 1


DEFAULT_CFG = {  # timm's data config of the CIFAR-stem models: CIFAR-10's statistics, 32 px, no crop
    "input_size": (3, 32, 32), "mean": (0.4914, 0.4822, 0.4465), "std": (0.2470, 0.2435, 0.2616),
    "num_classes": 10, "crop_pct": 1.0, "interpolation": "bilinear", "first_conv": "conv1", "classifier": "fc",
    "license": "mit"}
CIFAR_MODELS = tuple(f"fastsat_{name}_cifar" for name in CIFAR_LAYERS)
# timm's default configs of the registered names (what @register_model reads from this module); they
# name no weights, so ``pretrained=True`` needs a file (``pretrained_cfg_overlay=dict(file=...)``),
# ``local-dir:`` or ``hf-hub:`` and raises without one
default_cfgs = generate_default_cfgs({name: DEFAULT_CFG for name in CIFAR_MODELS})
DATA_CONFIG_KEY = "fastsat.pretrained_cfg"  # safetensors metadata of an export: the run's data config


class CifarResNet(ResNet):
    """timm ResNet with a 3×3 stride-1 stem and no max-pool (keeps a 4×4 map at layer4 on 32 px);
    ``width`` scales the channels of the four stages."""

    def __init__(self, layers, width: float = 1.0, in_chans: int = 3, **kwargs):
        channels = tuple(max(8, int(round(c * width))) for c in WIDTH)
        super().__init__(block=BasicBlock, layers=layers, channels=channels, stem_width=channels[0],
                         in_chans=in_chans, **kwargs)
        self.conv1 = nn.Conv2d(in_chans, self.conv1.out_channels, 3, 1, 1, bias=False)
        self.maxpool = nn.Identity()


def _tuples(cfg: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()}  # JSON lists → timm's tuples


def weights_data_config(path) -> dict:
    """The data config an exported ``model.safetensors`` carries in its metadata ({} for other files)."""
    if not str(path).endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return _tuples(json.loads(meta[DATA_CONFIG_KEY])) if DATA_CONFIG_KEY in meta else {}


def _create(variant: str, pretrained: bool = False, **kwargs) -> CifarResNet:
    """Through timm's builder, as timm's own ResNets are, so every loading path works: the config's
    ``file`` (``pretrained_cfg_overlay``), ``local-dir:``, ``hf-hub:`` and ``checkpoint_path``. A
    weights file exported by fastsat brings its data config (input size, mean, std, classes)."""
    overlay = _tuples(dict(kwargs.pop("pretrained_cfg_overlay", None) or {}))
    if pretrained and "file" in overlay:
        overlay = {**weights_data_config(overlay["file"]), **overlay}
    if "in_chans" in kwargs and "input_size" not in overlay and not kwargs.get("pretrained_cfg"):
        overlay["input_size"] = (kwargs["in_chans"], *DEFAULT_CFG["input_size"][1:])
    return build_model_with_cfg(partial(CifarResNet, CIFAR_LAYERS[variant.split("_")[1]]), variant, pretrained,
                                pretrained_cfg_overlay=overlay, feature_cfg={"flatten_sequential": True}, **kwargs)


@register_model
def fastsat_resnet10_cifar(pretrained=False, **kwargs) -> ResNet:
    """ResNet-10 (BasicBlock 1-1-1-1), CIFAR stem: the paper's small teacher."""
    return _create("fastsat_resnet10_cifar", pretrained, **kwargs)


@register_model
def fastsat_resnet18_cifar(pretrained=False, **kwargs) -> ResNet:
    """ResNet-18 (BasicBlock 2-2-2-2), CIFAR stem."""
    return _create("fastsat_resnet18_cifar", pretrained, **kwargs)


@register_model
def fastsat_resnet34_cifar(pretrained=False, **kwargs) -> ResNet:
    """ResNet-34 (BasicBlock 3-4-6-3), CIFAR stem: the paper's large teacher."""
    return _create("fastsat_resnet34_cifar", pretrained, **kwargs)


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
