"""TrainConfig: every knob of a run, with its help text, unit and valid range; ``--config FILE`` then flags.

A file (TOML, YAML or JSON) sets defaults, flags override them, unknown keys and wrong types are
rejected, and every value is checked against its rule before any work starts. The help text of
each flag is the field's own (``python -m fastsat.train --help``). The resolved config is saved
to ``OUT/config.json`` with library versions and the git commit, and inside every checkpoint.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import ArgumentParser, InputError
from .kernels.spec import ALPHA, EPS0
from .methods import METHODS
from .options import (EPS_RULE, UNITS, Rule, above, at_least, between, flag, opt, parse_eps,
                      parse_list)
from .robustness import EvalSettings


@dataclass
class TrainConfig(EvalSettings):
    # data
    train: str = opt("data/digits_train.beton", "training beton (its manifest X.beton.json beside it)")
    val: str = opt("data/digits_test.beton", "test beton: final robustness report (never used to choose a model)")
    holdout: float = opt(0.1, "held-out part of the training beton for model selection: a fraction (< 1) "
                              "or a number of samples (seeded, class-stratified)", rule=above(0))
    verify: bool = opt(False, "hash the betons against their manifests before use (slow for big files)", role="free")
    gpu_resident: bool = opt(False, "hold the whole training beton on the device (small sets)")
    workers: int = opt(2, "FFCV loader threads, at most the machine's cores",
                       rule=Rule(f"in [1, {os.cpu_count() or 1}] (the machine's cores)",
                                 lambda v: 1 <= v <= (os.cpu_count() or 1)), role="free")
    sal_field: str = opt("sal", "saliency field SAT reads", choices=lambda: ["sal", "sal2"])
    sal_mix: bool = opt(False, "per-sample coin between the fields sal and sal2 (paper Table 7)")
    flip: bool = opt(True, "random left-right flip, after the perturbation")
    pad: int = opt(2, "random translation by up to ± this many pixels, after the perturbation", rule=at_least(0))
    # model
    model: str = opt("resnet18", "resnet10/18/34 (CIFAR stem, registered in timm) or any timm model name")
    width: float = opt(1.0, "channel multiplier of the fastsat ResNets (narrow = quick on CPU; at most 16)",
                       rule=between(0, 16, lo_open=True))
    init: str = opt("", "checkpoint whose weights start this run (e.g. to fine-tune a pruned teacher)")
    sparsity: float = opt(0.0, "global magnitude pruning of conv/linear weights at the start, kept while "
                               "training (fraction)", rule=between(0, 1, hi_open=True))
    # method
    method: str = opt("sat", "training method", choices=lambda: list(METHODS))
    eps: float = opt(EPS0 * 255, "ε₀ of SAT / noise / training attacks, in 1/255 (8 or 8/255)", rule=EPS_RULE,
                     eps_like=True)
    sat_schedule: str = opt("run", "Eq. 9's P(random): run = the paper's 100-epoch decay spread over this run's steps "
                                   "(1 → 0.6^10 however many epochs), epoch = sat_alpha ** epoch as written "
                                   "(reaches 0.6 only after 10 epochs)", choices=lambda: ["run", "epoch"])
    sat_alpha: float = opt(ALPHA, "Eq. 9: P(random) = sat_alpha ** t, t the epoch (paper: 0.6 ** (1/10))",
                           rule=between(0, 1, lo_open=True))
    pgd_steps: int = opt(5, "training PGD / TRADES steps", rule=at_least(1))
    pgd_alpha: float = opt(2.0, "training PGD / TRADES step, in 1/255 (2 or 2/255)", rule=EPS_RULE, eps_like=True)
    nfgsm_k: float = opt(2.0, "N-FGSM noise magnitude: U(−k·eps, k·eps) (its paper: 2)", rule=between(0, 16))
    trades_beta: float = opt(6.0, "TRADES β (its own CIFAR default; the SAT reference code used 1)", rule=at_least(0))
    hybrid_p: float = opt(0.5, "probability that a hybrid (pgd_sat, ...) batch is the SAT / noise batch",
                          rule=between(0, 1))
    # optimisation
    epochs: int = opt(30, "training epochs", rule=at_least(1))
    batch_size: int = opt(128, "batch size per process (at most the training set)", rule=at_least(1))
    optimizer: str = opt("adam", "adam (the paper's) or sgd (momentum 0.9, nesterov)", choices=lambda: ["adam", "sgd"])
    lr: float = opt(1e-3, "learning rate (paper: Adam, 1e-3)", rule=above(0))
    weight_decay: float = opt(0.0, "weight decay", rule=at_least(0))
    lr_schedule: str = opt("none", "learning-rate schedule, per step: none (constant: the paper's Adam), cosine, "
                                   "step (×0.1 at 50% and 75% of the run), onecycle (linear 0 → lr over the first "
                                   "warmup fraction, then linear to 0: the fast-AT baselines' recipe)",
                           choices=lambda: ["none", "cosine", "step", "onecycle"])
    warmup: float = opt(0.4, "onecycle: fraction of the run spent rising to lr", rule=between(0, 1, lo_open=True,
                                                                                               hi_open=True))
    label_smoothing: float = opt(0.0, "label smoothing of the training cross-entropy", rule=between(0, 1, hi_open=True))
    amp: bool = opt(True, "float16 autocast + grad scaling on CUDA (ignored on CPU)")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N", role="free", evaluate=True)
    # model selection (on the holdout, every epoch)
    select: str = opt("auto", "checkpoint evaluated at the end: the epoch with the best holdout accuracy under PGD "
                              "(robust) or clean (clean), the method's own choice of the two (auto), or the last",
                      choices=lambda: ["auto", "robust", "clean", "last"])
    select_limit: int = opt(512, "holdout samples checked each epoch (stratified; 0: all)", rule=at_least(0))
    select_steps: int = opt(10, "PGD steps of the per-epoch holdout check (at ε = eps, step eps/4)", rule=at_least(1))
    select_min_clean: float = opt(0.5, "robust selection passes over a collapsed epoch: one whose holdout clean "
                                        "accuracy is below this fraction of the best seen so far (0: off)",
                                  rule=between(0, 1))
    co_drop: float = opt(20.0, "catastrophic-overfitting guard: holdout PGD accuracy falling by more than this "
                               "many points in one epoch is flagged", rule=above(0))
    fail_on_masking: bool = opt(True, "exit with code 3 when a gradient-masking check fails (the reports are "
                                      "written either way, marked masked)", role="free",
                                evaluate=True)
    # bookkeeping
    out: str = opt("runs/run", "output folder", role="free")
    resume: bool = opt(False, "continue the run in --out from its last checkpoint", role="free")
    overwrite: bool = opt(False, "replace the fastsat run in --out (kept until the new one has a checkpoint)", role="free")
    allow_other_data: bool = opt(False, "grade on a test beton of another dataset than the training data "
                                        "(same classes and image shape; the report says so)", role="free",
                                 evaluate=True)
    log_csv: bool = opt(False, "also write metrics.csv (the metrics.jsonl fields, one row per epoch)", role="free")
    allow_change: bool = opt(False, "with --resume: accept changed settings (recorded in config.json with "
                                    "the epoch they took effect)", role="free")

    def validate(self) -> "TrainConfig":
        super().validate()  # every field's type and range, and the evaluation's own checks
        if self.resume and self.overwrite:
            raise InputError("--resume and --overwrite exclude each other")
        if self.sal_mix and not METHODS.get(self.method).needs_saliency:
            raise InputError(f"--sal-mix mixes saliency maps; method {self.method} reads none")
        return self


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def role_names(*roles: str) -> set[str]:
    """The fields of the given roles."""
    return {n for n, f in FIELDS.items() if f.metadata["role"] in roles}


def evaluate_names() -> set[str]:
    """The fields ``python -m fastsat.evaluate`` takes as flags (``opt(evaluate=...)``)."""
    return {n for n, f in FIELDS.items() if f.metadata["evaluate"]}


def differing(saved: dict, cfg: TrainConfig, roles=("run", "eval")) -> dict:
    """{key: (saved value, requested value)} for the fields of ``roles`` that differ."""
    names = role_names(*roles)
    return {k: (saved.get(k), v) for k, v in dataclasses.asdict(cfg).items() if k in names and saved.get(k) != v}


def in_units(values: dict) -> dict:
    """Config values with written fractions ('8/255', from a file) of ε-like keys in 1/255."""
    def one(f, v):
        if not f.metadata.get("eps_like"):
            return v
        if isinstance(v, list):
            return [parse_eps(x) if isinstance(x, str) else x for x in v]
        return parse_eps(v) if isinstance(v, str) else v
    try:
        return {k: one(FIELDS[k], v) if k in FIELDS else v for k, v in values.items()}
    except argparse.ArgumentTypeError as e:
        raise InputError(str(e)) from None


def saved_config(cfg: "TrainConfig") -> dict:
    """The config as checkpoints and config.json hold it, its unit named."""
    return {**dataclasses.asdict(cfg), "units": UNITS}


def upgrade(saved: dict) -> dict:
    """A saved config in today's fields and units: configs saved before ε-like values moved to 1/255
    (no ``units`` key) held ``eps`` and ``pgd_alpha`` as fractions of 1; retired keys are dropped."""
    values = dict(saved)
    if values.get("units") != UNITS:
        values.update({k: values[k] * 255 for k in ("eps", "pgd_alpha") if isinstance(values.get(k), (int, float))})
    return {k: v for k, v in values.items() if k in FIELDS}


RUN_KIND = "fastsat-run"  # a run folder's config.json says so in its "kind": what makes a folder a run


INVOCATION = ("overwrite", "resume", "allow_change")  # requests of one command line: never read from a file


def read_config_file(path: Path) -> tuple[dict, bool]:
    """A TOML / YAML / JSON file of TrainConfig keys (unknown keys are an error), or a run folder's
    config.json: that run's settings, in today's fields and units (train it again with --config),
    without its folder and the requests of the command that made it; and whether it was a run's."""
    data = read_table(path)
    if data.get("kind") == RUN_KIND and isinstance(data.get("config"), dict):
        return {k: v for k, v in upgrade(data["config"]).items() if k not in (*INVOCATION, "out")}, True
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise InputError(f"config file {path}: unknown keys {', '.join(unknown)}")
    asked = [k for k in INVOCATION if k in data]
    if asked:
        raise InputError(f"config file {path}: {', '.join(asked)} is a request of one command, not a setting: "
                         f"give {', '.join(flag(k) for k in asked)} on the command line")
    return data, False


def read_recipes(path: Path, methods: list[str]) -> dict[str, dict]:
    """A TOML / YAML / JSON table {method: {TrainConfig key: value}} of per-method training recipes
    (e.g. SGD + one-cycle for fgsm_rs, the paper's Adam for sat); only keys that shape training."""
    data = read_table(path)
    allowed = role_names("run") - {"method", "train", "val", "seed"}
    for method, recipe in data.items():
        if method not in methods:
            raise InputError(f"recipes {path}: {method!r} is not one of --methods ({', '.join(methods)})")
        bad = sorted(set(recipe) - allowed) if isinstance(recipe, dict) else ["(not a table)"]
        if bad:
            raise InputError(f"recipes {path}: {method}: keys {', '.join(bad)} are not training settings")
    return data


def read_table(path: Path) -> dict:
    """A TOML / YAML / JSON file holding a table."""
    if not path.is_file():
        raise InputError(f"config file {path} not found")
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            import tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except UnicodeDecodeError:
        raise InputError(f"config file {path}: not text (a binary file?)") from None
    except Exception as e:  # noqa: BLE001 - any parser's error is the user's file
        raise InputError(f"config file {path}: {(str(e).splitlines() or [type(e).__name__])[0]}") from None
    if not isinstance(data, dict):
        raise InputError(f"config file {path}: expected a table of keys, got {type(data).__name__}")
    return data


def add_fields(ap, names=None) -> None:
    """One flag per TrainConfig field (or the ``names`` given), help text and choices from the field."""
    for f in dataclasses.fields(TrainConfig):
        if names is not None and f.name not in names:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f.metadata["help"]
        if f.metadata.get("rule") is not None:
            help_text += f"; {f.metadata['rule'].text}"
        kw = {"default": None, "help": f"{help_text} (default: {default})".replace("%", "%%")}
        if isinstance(default, bool):
            ap.add_argument(flag(f.name), action=argparse.BooleanOptionalAction, **kw)
        elif isinstance(default, list):
            ap.add_argument(flag(f.name), type=parse_list, metavar="A,B,...", **kw)
        else:
            choices = f.metadata.get("choices")
            ap.add_argument(flag(f.name), type=parse_eps if f.metadata["eps_like"] else type(default), **kw,
                            **({"choices": choices(), "metavar": "{" + ",".join(choices()) + "}"} if choices else {}))


def build_parser(prog: str, description: str, epilog: str = "") -> ArgumentParser:
    ap = ArgumentParser(prog=prog, description=description, epilog=epilog)
    ap.add_argument("--config", type=Path, help="TOML / YAML / JSON file of defaults (flags override it)")
    add_fields(ap)
    return ap


def load_config(argv=None, prog="python -m fastsat.train", description="") -> TrainConfig:
    """Defaults ← config file ← flags, validated."""
    return config_from_args(build_parser(prog, description).parse_args(argv))


def config_from_args(args, base: Optional[dict] = None, names=None) -> TrainConfig:
    """The TrainConfig of parsed arguments: ``base`` (e.g. a checkpoint's), the file, then the flags
    (those of ``names`` only, when given)."""
    values = upgrade(base) if base else {}
    if getattr(args, "config", None):
        saved, of_a_run = read_config_file(args.config)
        if of_a_run and "out" in (FIELDS if names is None else names) and getattr(args, "out", None) is None:
            raise InputError(f"--config {args.config} is a run's own config: give --out (a saved run's folder is "
                             f"never reused unless named; --out it --resume continues it)")
        values.update(in_units(saved))
    names = FIELDS if names is None else names
    values.update({k: v for k, v in vars(args).items() if k in names and v is not None})
    return TrainConfig(**values).validate()


def provenance() -> dict:
    """Library versions (as strings: checkpoints hold plain data) and the git commit, saved beside
    every config."""
    import numpy
    import timm
    import torch

    info = {"torch": str(torch.__version__), "timm": str(timm.__version__), "numpy": str(numpy.__version__)}
    for name in ("triton", "ffcv", "torchattacks", "pyautoattack"):
        try:
            info[name] = str(getattr(__import__(name), "__version__", "unknown"))
        except ImportError:
            pass
    try:
        root = Path(__file__).resolve().parents[1]
        info["git_commit"] = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                            text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["git_commit"] = None
    return info
