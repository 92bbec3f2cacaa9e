"""ffcv, imported without its side effect on torch: importing ffcv 1.0.2 runs
``Compiler.set_num_threads(1)``, which sets torch's thread count to 1 for the whole process (every
later forward, attack and evaluation then uses one core). ``ffcv()`` imports it and puts torch's
thread count back; every module of fastsat that needs ffcv goes through it.
"""
from __future__ import annotations

import importlib
from types import ModuleType


def ffcv(module: str = "ffcv") -> ModuleType:
    """``import ffcv.<...>`` with torch's thread count kept; ImportError when ffcv is missing."""
    import torch

    threads = torch.get_num_threads()
    try:
        return importlib.import_module(module)
    finally:
        torch.set_num_threads(threads)


def available() -> bool:
    try:
        ffcv()
    except ImportError:
        return False
    return True
