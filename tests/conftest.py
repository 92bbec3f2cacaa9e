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


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """The embedded digits set as train/test betons, written once per test session."""
    from fastsat.write_beton import main

    root = tmp_path_factory.mktemp("digits")
    paths = {}
    for split in ("train", "test"):
        paths[split] = root / f"{split}.beton"
        assert main(["--dataset", "digits", "--split", split, "--out", str(paths[split]), "--workers", "2"]) == 0
    return paths


@pytest.fixture(scope="session")
def tiny_flags(digits):
    """Train flags for runs that take seconds on 2 CPU cores."""
    return ["--train", str(digits["train"]), "--val", str(digits["test"]), "--model", "resnet10", "--width", "0.125",
            "--batch-size", "64", "--workers", "2", "--eval-eps", "2,8", "--eval-noise", "8", "--eval-limit", "64"]
