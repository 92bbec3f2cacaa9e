"""Dataset readers, one module per official on-disk layout; each yields (image, label, positive).

Each layout registers itself with ``@register_layout`` (``common.py``); ``open_writer(name, ...)``
builds one, checking the options it takes. ``LAYOUTS`` lists them (with their weak saliency).
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

from .common import LAYOUTS, OPTIONS, WEAK_KINDS, InputError, Layout, Source, register_layout

for _module in pkgutil.iter_modules(__path__):  # every layout module registers itself on import
    importlib.import_module(f"{__name__}.{_module.name}")


def open_writer(dataset: str, split: str = "train", **given):
    """The sample sequence for ``dataset`` (its ``.source`` describes it). ``given``: options the
    user set (None: not set); one the layout does not take is an error, not silently ignored."""
    layout = LAYOUTS.get(dataset)
    if split not in layout.splits:
        raise InputError(f"{dataset} has splits {layout.splits}, not {split!r}")
    given = {k: v for k, v in given.items() if v is not None}
    extra = sorted(set(given) - set(layout.options))
    if extra:
        raise InputError(f"{dataset} does not take {', '.join('--' + k.replace('_', '-') for k in extra)}")
    options = {**layout.options, **given}
    if "root" in options:
        root = options["root"]
        if root is None or ("root" not in given and not Path(root).is_dir()):
            raise InputError(f"--root is required for {dataset} ({layout.description})")
        if not Path(root).is_dir():
            raise InputError(f"--root {root}: {'not a folder' if Path(root).exists() else 'does not exist'}")
        options["root"] = Path(root)
    if "side" in given and (not isinstance(given["side"], int) or given["side"] < 1):
        raise InputError(f"--side must be >= 1, got {given['side']}")
    return layout.factory(split=split, **options)


__all__ = ["LAYOUTS", "OPTIONS", "WEAK_KINDS", "InputError", "Layout", "Source", "open_writer", "register_layout"]
