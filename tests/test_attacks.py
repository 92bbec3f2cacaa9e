"""Attacks on a model trained for a few epochs on digits: the properties PGD must have, agreement
with torchattacks, the white-box saliency attack, and the reference fidelity of FGSM-RS / TRADES."""
import copy

import torch
import torch.nn.functional as F

from fastsat.attacks import FGSMRS, PGD, SaliencyAttack, StoredMapAttack, UniformNoise
from fastsat.config import TrainConfig
from fastsat.batch import Batch
from fastsat.methods import training_loss
from fastsat.models import build_model
from fastsat.robustness import correct_under, eval_data, sample_indices


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
    import torchattacks

    model, x, y, _ = trained
    for eps, steps in [(2, 5), (4, 10)]:
        ours = acc(model, PGD(eps / 255, 2 / 255, steps)(model, x, y), y)
        theirs = acc(model, torchattacks.PGD(model.eval(), eps=eps / 255, alpha=2 / 255, steps=steps,
                                             random_start=True)(x, y), y)
        assert abs(ours - theirs) <= 1.0 + 100 / len(y), (eps, steps, ours, theirs)  # 1 pp + one sample


def test_noise_and_stored_map_attacks(trained):
    model, x, y, _ = trained
    noisy = UniformNoise(8 / 255)(model, x, y, generator=torch.Generator().manual_seed(0))
    assert 0 < (noisy - x).abs().max() <= 8 / 255 + 1e-6
    signs = torch.where(torch.rand_like(x) < 0.5, 1.0, -1.0)  # every element moves by ε against its sign
    assert torch.allclose(StoredMapAttack(4 / 255)(model, x, y, signs=signs), (x - 4 / 255 * signs).clamp(0, 1))


def test_white_box_saliency_attack_is_the_papers():
    model = build_model("resnet10", 10, (0.5,) * 3, (0.25,) * 3, width=0.125).eval()
    x, y = torch.rand(6, 3, 32, 32), torch.randint(0, 10, (6,))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg)[torch.arange(6), y].sum(), xg)  # ∇ₓ Φ^y
    assert torch.equal(SaliencyAttack(3 / 255)(model, x, y), (x - 3 / 255 * grad.sign()).clamp(0, 1))


def test_white_box_saliency_beats_the_stored_map(trained, digits):
    from fastsat.beton import open_beton

    model, _, _, _ = trained
    info = open_beton(digits["test"])
    data = eval_data(info, sample_indices(info.labels, 128, 0), torch.device("cpu"))
    white = correct_under(model, data, SaliencyAttack(8 / 255)).float().mean().item()
    stored = correct_under(model, data, StoredMapAttack(8 / 255)).float().mean().item()
    assert white < stored - 0.3, (white, stored)


def reference_fgsm_rs(model, x, y, eps, alpha, start):
    """Wong et al. 2020, written out: δ from ``start``, clamped into [−x, 1 − x], one signed step of
    alpha, clamped to the ε-ball, then into [−x, 1 − x] again."""
    delta = torch.max(torch.min(start, 1 - x), -x).requires_grad_(True)
    F.cross_entropy(model(x + delta), y).backward()
    delta = (delta + alpha * delta.grad.sign()).clamp(-eps, eps).detach()
    return x + torch.max(torch.min(delta, 1 - x), -x)


def test_fgsm_rs_matches_wong_et_al():
    model = build_model("resnet10", 10, (0.5,) * 3, (0.25,) * 3, width=0.125).train()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    x[:, :, :4] = 0.0  # black border: the clamp into [−x, 1 − x] matters here
    start = (torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) * 2 - 1) * 8 / 255
    expected = reference_fgsm_rs(model, x, y, 8 / 255, 10 / 255, start)
    ours = FGSMRS(8 / 255)(model, x, y, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(ours, expected, atol=1e-6)
    assert (ours - x).abs().max() <= 8 / 255 + 1e-6 and ours.min() >= 0


def test_trades_loss_matches_its_reference():
    """TRADES (Zhang et al.): clean and adversarial batches through separate forward passes."""
    torch.manual_seed(0)
    model = build_model("resnet10", 10, (0.5,) * 3, (0.25,) * 3, width=0.125).train()
    x = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    y = torch.randint(0, 10, (16,))
    cfg = TrainConfig(method="trades", flip=False, pad=0, pgd_steps=2)
    reference = copy.deepcopy(model)  # BatchNorm's running statistics move with every train-mode pass
    loss, _ = training_loss(cfg, model, Batch(x, y), p_random=1.0, seed=5)
    model = reference
    # the attack as ours (same generator), then the loss written out as the TRADES reference does
    from fastsat.attacks import TradesAttack

    xu = x.permute(0, 3, 1, 2).float() / 255
    from fastsat.kernels.spec import derive_seed

    gen = torch.Generator().manual_seed(derive_seed(5, "attack"))  # the batch's attack stream
    adv = TradesAttack(cfg.fraction("eps"), cfg.fraction("pgd_alpha"), 2)(model, xu, y, generator=gen)
    model.train()
    logits = model(xu)
    kl = F.kl_div(F.log_softmax(model(adv), 1), F.softmax(model(xu), 1), reduction="sum") / len(y)
    expected = F.cross_entropy(logits, y) + cfg.trades_beta * kl
    assert torch.allclose(loss, expected, rtol=1e-5, atol=1e-6)
