"""TrainConfig: every knob of a training run, its unit beside it; ``--config FILE`` then flags.

A file (TOML, YAML or JSON) sets defaults, flags override them, unknown keys are rejected. The
resolved config is saved to ``OUT/config.json`` with library versions and the git commit, and
inside every checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .kernels.sat import ALPHA, EPS0
from .methods import METHODS
from .writers.common import InputError


@dataclass
class TrainConfig:
    # data
    train: str = "data/digits_train.beton"  # training beton (manifest beside it)
    val: str = "data/digits_test.beton"  # validation / robustness beton
    verify: bool = False  # hash the betons against their manifests before use (slow for big files)
    gpu_resident: bool = False  # load the whole training beton onto the device once (small sets)
    workers: int = 2  # FFCV loader threads
    sal_field: str = "sal"  # saliency field SAT reads
    sal_mix: bool = False  # per-sample coin between `sal` and `sal2` (paper Table 7)
    flip: bool = True  # random left-right flip, after the perturbation
    pad: int = 2  # random translation, ± pixels, after the perturbation
    # model
    model: str = "resnet18"  # resnet10/18/34 (CIFAR stem, registered in timm) or any timm name
    width: float = 1.0  # channel multiplier of the fastsat ResNets (narrow = quick on CPU)
    init: str = ""  # checkpoint whose weights start this run (e.g. to fine-tune a pruned teacher)
    sparsity: float = 0.0  # global magnitude pruning of conv/linear weights at the start, kept while training
    # method
    method: str = "sat"  # one of fastsat.methods.METHODS
    eps: float = EPS0  # ε₀ of SAT / noise / training attacks, pixel units in [0, 1]
    sat_alpha: float = ALPHA  # Eq. 9: P(random) = sat_alpha ** epoch (paper: 0.6 ** (1/10))
    pgd_steps: int = 5  # training PGD / TRADES steps
    pgd_alpha: float = 2 / 255  # training attack step, pixel units
    trades_beta: float = 6.0  # TRADES' own CIFAR default (the SAT reference code used 1)
    hybrid_p: float = 0.5  # probability that a hybrid (pgd_sat, ...) batch is the SAT / noise batch
    # optimisation
    epochs: int = 30
    batch_size: int = 128  # per process
    optimizer: str = "adam"  # adam (the paper's) | sgd (momentum 0.9, nesterov)
    lr: float = 1e-3  # paper: Adam, 1e-3
    weight_decay: float = 0.0
    schedule: str = "none"  # none | cosine | step (×0.1 at 50% and 75% of the epochs)
    amp: bool = True  # float16 autocast + grad scaling on CUDA (ignored on CPU)
    seed: int = 0  # model init, loader order, every per-step random draw
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # evaluation (fastsat.evaluate)
    eval_eps: list = field(default_factory=lambda: [1, 2, 3, 4, 8])  # PGD / TRADES / saliency ε, in 1/255
    eval_steps: list = field(default_factory=lambda: [5])  # PGD steps (paper: 5, 20, 40)
    eval_noise: list = field(default_factory=lambda: [8, 16, 32])  # uniform noise ε, in 1/255
    eval_step_size: float = 2.0  # attack step, in 1/255
    eval_limit: int = 0  # evaluate on the first N validation samples (0: all)
    # bookkeeping
    out: str = "runs/run"  # output folder
    resume: bool = False  # continue the run in `out` from its last checkpoint
    overwrite: bool = False  # replace a run already in `out`

    def validate(self) -> "TrainConfig":
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}")
        if not 0.0 <= self.sparsity < 1.0:
            raise InputError(f"sparsity must be in [0, 1), got {self.sparsity}")
        for name in ("eps", "hybrid_p", "pgd_alpha"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InputError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.sat_alpha <= 1.0:
            raise InputError(f"sat_alpha must be in (0, 1], got {self.sat_alpha}")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.schedule not in ("none", "cosine", "step"):
            raise InputError(f"schedule must be none, cosine or step, got {self.schedule!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError("epochs and batch_size must be >= 1")
        if any(not 0 < e <= 255 for e in [*self.eval_eps, *self.eval_noise]):
            raise InputError("eval_eps and eval_noise are in 1/255 units and must be in (0, 255]")
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite exclude each other")
        return self


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def parse_list(text: str) -> list:
    """'1,2,3.5' → [1, 2, 3.5]."""
    return [float(v) if "." in v else int(v) for v in str(text).replace(" ", "").split(",") if v]


def read_config_file(path: Path) -> dict:
    """A TOML / YAML / JSON file of TrainConfig keys; unknown keys are an error."""
    if not path.is_file():
        raise InputError(f"config file {path} not found")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parser's error is the user's file
        raise InputError(f"config file {path}: {e}") from None
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InputError(f"config file {path}: unknown keys {', '.join(unknown)}")
    return data


def build_parser(prog: str, description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", type=Path, help="TOML / YAML / JSON file of defaults (flags override it)")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        elif isinstance(default, list):
            ap.add_argument(flag, type=parse_list, default=None, metavar="A,B,...")
        else:
            ap.add_argument(flag, type=type(default), default=None)
    return ap


def load_config(argv=None, prog="python -m fastsat.train", description="") -> TrainConfig:
    """Defaults ← config file ← flags, validated."""
    return config_from_args(build_parser(prog, description).parse_args(argv))


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The TrainConfig of parsed ``build_parser`` arguments: file values, then flags."""
    values = read_config_file(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k in FIELDS and v is not None})
    try:
        return TrainConfig(**values).validate()
    except TypeError as e:
        raise InputError(str(e)) from None


def provenance() -> dict:
    """Library versions and the git commit, saved beside every config."""
    import numpy
    import timm
    import torch
    import triton

    info = {"torch": torch.__version__, "timm": timm.__version__, "triton": triton.__version__,
            "numpy": numpy.__version__}
    try:
        import ffcv
        info["ffcv"] = getattr(ffcv, "__version__", "unknown")
    except ImportError:
        pass
    try:
        root = Path(__file__).resolve().parents[1]
        info["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                            text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    return info
