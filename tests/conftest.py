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
            "--batch-size", "64", "--workers", "2", "--eval-eps", "2,8", "--eval-noise", "8", "--eval-limit", "64",
            "--eval-aa", "apgd-ce", "--eval-aa-steps", "5", "--select-limit", "64", "--select-steps", "3",
            "--no-eval-checks"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory, tiny_flags, digits):
    """A standard model trained for a few epochs on digits; (model, x, y, run folder) with a batch of
    128 test images in [0, 1]."""
    from fastsat.beton import open_beton
    from fastsat.reader import BetonReader
    from fastsat.runs import load_checkpoint
    from fastsat.train import main as train_main

    out = tmp_path_factory.mktemp("trained") / "run"
    assert train_main([*tiny_flags, "--method", "standard", "--epochs", "8", "--width", "0.25", "--lr", "3e-3",
                       "--out", str(out), "--eval-eps", "1", "--select", "last"]) == 0
    model = load_checkpoint(out / "checkpoint.pt", torch.device("cpu"))["model"]
    reader = BetonReader(open_beton(digits["test"]).path)
    x = torch.from_numpy(reader.read("image", np.arange(128))).permute(0, 3, 1, 2).float().div(255).contiguous()
    return model, x, torch.from_numpy(reader.read("label", np.arange(128))), out
