"""Attacks on a model trained for a few epochs on digits: the properties PGD must have, and
agreement with torchattacks (a test-only dependency)."""
import pytest
import torch

from fastsat.attacks import PGD, SaliencyAttack, UniformNoise
from fastsat.beton import open_beton
from fastsat.data import make_batches
from fastsat.evaluate import _accuracy
from fastsat.train import load_checkpoint, main as train_main


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_flags, digits):
    out = tmp_path_factory.mktemp("trained")
    assert train_main([*tiny_flags, "--method", "standard", "--epochs", "8", "--width", "0.25", "--lr", "3e-3",
                       "--out", str(out), "--eval-eps", "1"]) == 0
    model = load_checkpoint(out / "checkpoint.pt", torch.device("cpu"))["model"]
    batches = make_batches(open_beton(digits["test"]), ["sal"], batch_size=128, workers=2,
                           device=torch.device("cpu"), train=False, seed=0)
    x, y, sal, _ = next(batches.epoch(0))
    return model, x.permute(0, 3, 1, 2).float().div(255).contiguous(), y, batches


def acc(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item() * 100


def test_pgd_properties(trained):
    model, x, y, _ = trained
    clean = acc(model, x, y)
    assert clean > 70
    by_eps = []
    for eps in [1, 2, 4, 8]:
        adv = PGD(eps / 255, 2 / 255, 5)(model, x, y, generator=torch.Generator().manual_seed(0))
        assert (adv - x).abs().max() <= eps / 255 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        by_eps.append(acc(model, adv, y))
    assert by_eps[0] <= clean
    assert all(b <= a + 1.0 for a, b in zip(by_eps, by_eps[1:]))  # non-increasing in ε (1 pp noise)
    assert by_eps[-1] < clean - 20
    by_steps = [acc(model, PGD(2 / 255, 0.5 / 255, k)(model, x, y, generator=torch.Generator().manual_seed(0)), y)
                for k in (1, 5, 20)]
    assert all(b <= a + 1.0 for a, b in zip(by_steps, by_steps[1:]))  # non-increasing in steps


def test_pgd_agrees_with_torchattacks(trained):
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y, _ = trained
    for eps, steps in [(2, 5), (4, 10)]:
        ours = acc(model, PGD(eps / 255, 2 / 255, steps)(model, x, y), y)
        theirs = acc(model, torchattacks.PGD(model.eval(), eps=eps / 255, alpha=2 / 255, steps=steps,
                                             random_start=True)(x, y), y)
        assert abs(ours - theirs) <= 1.0 + 100 / len(y), (eps, steps, ours, theirs)  # 1 pp + one sample


def test_noise_and_saliency_attacks(trained):
    model, x, y, batches = trained
    noisy = UniformNoise(8 / 255)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert 0 < (noisy - x).abs().max() <= 8 / 255 + 1e-6
    # the saliency attack moves every element by ε against its sign (before clipping)
    signs = torch.where(torch.rand_like(x) < 0.5, 1.0, -1.0)
    adv = SaliencyAttack(4 / 255)(model, x, y, signs=signs)
    assert torch.allclose(adv, (x - 4 / 255 * signs).clamp(0, 1))
    full = _accuracy(model, batches.epoch(0), SaliencyAttack(4 / 255), granularity="pixel", limit=64)
    assert 0 <= full <= 100
