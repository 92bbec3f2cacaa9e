"""Shared fixtures. Without CUDA, Triton kernels run in its interpreter (set before triton loads)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def seed():
    """Every test starts from the same RNG state, so failures reproduce."""
    torch.manual_seed(0)
    np.random.seed(0)
    return 0


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
