import math

import pytest
import torch

from fastsat.attacks import FGSMRS, PGD, TradesAttack
from fastsat.kernels import bits as bitlayout
from fastsat.config import TrainConfig
from fastsat.batch import Batch
from fastsat.errors import InputError
from fastsat.kernels.sat import random_prob
from fastsat.kernels.spec import derive_seed
from fastsat.methods import METHODS, train_step, training_loss
from fastsat.models import build_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def fixed_batch(n=16):
    x = torch.randint(0, 256, (n, 32, 32, 3), dtype=torch.uint8, device=DEVICE)
    y = torch.randint(0, 10, (n,), device=DEVICE)
    b = bitlayout.pack_torch(torch.rand(n, 32 * 32 * 3, device=DEVICE) < 0.5)
    return x, y, b


def small_model():
    return build_model("resnet10", 10, (0.5,) * 3, (0.25,) * 3, width=0.125).to(DEVICE)


@pytest.mark.parametrize("name", METHODS)
def test_every_method_lowers_its_loss(name):
    x, y, b = fixed_batch()
    model = small_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    cfg = TrainConfig(method=name, flip=False, pad=0)

    def loss_now():
        model.train()
        return training_loss(cfg, model, Batch(x, y, b), p_random=random_prob(3), seed=123)[0].item()

    before = loss_now()
    for i in range(6):
        train_step(cfg, model, opt, Batch(x, y, b), p_random=random_prob(3), seed=derive_seed(0, 3, i))
    assert loss_now() < before


class Recorder(torch.nn.Module):
    """A model that remembers its input and predicts uniformly."""

    def forward(self, x):
        self.seen = x.detach()
        return torch.zeros(x.shape[0], 10, device=x.device, requires_grad=True)


@pytest.mark.parametrize("epoch", [0, 100])
def test_sat_schedule_through_the_dispatcher(epoch):
    x = torch.full((32, 32, 32, 3), 128, dtype=torch.uint8)
    positive = torch.rand(32, 32 * 32 * 3) < 0.5
    model = Recorder()
    training_loss(TrainConfig(method="sat", flip=False, pad=0), model,
                  Batch(x, torch.zeros(32, dtype=torch.long), bitlayout.pack_torch(positive)),
                  p_random=random_prob(epoch), seed=9)
    up = (model.seen > 128 / 255).permute(0, 2, 3, 1).reshape(32, -1)
    follows = (up != positive).double().mean().item()  # δ = −s
    q = 1 - random_prob(epoch) / 2
    assert abs(follows - q) < 4 * math.sqrt(q * (1 - q) / up.numel()) + 1e-9


def test_saliency_method_needs_bits():
    x, y, _ = fixed_batch(4)
    with pytest.raises(InputError, match="saliency"):
        training_loss(TrainConfig(method="sat"), small_model(), Batch(x, y), p_random=0.5, seed=1)
    with pytest.raises(InputError, match="unknown 'sat2'"):
        TrainConfig(method="sat2").validate()


@pytest.mark.parametrize("attack", [PGD(eps=4 / 255, steps=3), FGSMRS(eps=4 / 255), TradesAttack(eps=4 / 255, steps=2)])
def test_attacks_stay_in_the_ball_and_restore_mode(attack):
    x = torch.rand(8, 3, 32, 32, device=DEVICE)
    y = torch.randint(0, 10, (8,), device=DEVICE)
    model = small_model().train()
    adv = attack(model, x, y)
    assert model.training
    assert not adv.requires_grad
    assert (adv - x).abs().max() <= 4 / 255 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    assert (adv != x).any()


def test_run_schedule_spans_the_papers_decay_whatever_the_run():
    from fastsat.methods import p_random

    for epochs, steps in [(4, 100), (4, 25), (15, 7), (1, 3)]:
        cfg = TrainConfig(epochs=epochs, sat_schedule="run")
        ps = [p_random(cfg, e, s, steps) for e in range(epochs) for s in range(steps)]
        assert ps[0] == 1.0 and ps[-1] == pytest.approx(0.6 ** 10)
        assert all(a > b for a, b in zip(ps, ps[1:]))  # strictly falling, per step
    # the same at the same fraction of the run, whatever the batch size (steps per epoch)
    a, b = TrainConfig(epochs=4, sat_schedule="run"), TrainConfig(epochs=4, sat_schedule="run")
    assert p_random(a, 2, 0, 100) == pytest.approx(p_random(b, 2, 0, 101), rel=0.02)
    paper = TrainConfig(epochs=4, sat_schedule="epoch")
    assert [p_random(paper, e, 0, 10) for e in range(4)] == [random_prob(e) for e in range(4)]


def test_sign_moves_every_element_by_eps_with_a_random_sign():
    """The random-sign control: |δ| = ε everywhere (before clipping), sign independent of any map."""
    from fastsat.methods import Step

    cfg = TrainConfig(method="sign", flip=False, pad=0)
    x = torch.full((64, 8, 8, 3), 128, dtype=torch.uint8)  # mid-grey: no clipping
    positive = torch.ones(64, 8, 8, 3, dtype=torch.bool)  # a map of all +1 (SAT would push every element down)
    bits = bitlayout.pack_torch(positive)
    out = Step(Batch(x, torch.zeros(64, dtype=torch.long), bits), 0.006, seed=3).sat(cfg, p_random=1.0)
    delta = out.permute(0, 2, 3, 1) - 128 / 255
    assert torch.allclose(delta.abs(), torch.full_like(delta, cfg.fraction("eps")), atol=1e-6)
    agree = (delta < 0).float().mean().item()  # agreement with −s: ½ within 4σ
    assert abs(agree - 0.5) < 4 * math.sqrt(0.25 / delta.numel())
    nomap = Step(Batch(x, torch.zeros(64, dtype=torch.long)), 0.006, seed=3).sat(cfg, p_random=1.0)
    assert torch.allclose(nomap.permute(0, 2, 3, 1).sub(128 / 255).abs(), torch.full_like(delta, cfg.fraction("eps")), atol=1e-6)
    with pytest.raises(InputError, match="--sal-mix"):
        TrainConfig(method="sign", sal_mix=True).validate()


def test_the_map_mix_and_the_flip_are_independent(tmp_path):
    """Table 7's per-sample coin and the flip come from streams of their own: they agree about half
    the time (they used to be the same random numbers: 100%)."""
    from fastsat.augment import augment
    from fastsat.data import mix_saliency

    agree, total = 0, 0
    for step in range(20):
        seed = derive_seed(0, "step", 0, 0, step)
        n = 256
        a, b = torch.zeros(n, 4, dtype=torch.uint8), torch.ones(n, 4, dtype=torch.uint8)
        took_first = mix_saliency(a, b, torch.Generator().manual_seed(derive_seed(seed, "map_mix")))[:, 0] == 0
        x = torch.arange(4, dtype=torch.float32).view(1, 1, 1, 4).expand(n, 1, 1, 4).contiguous()
        flipped = augment(x, 0, True, torch.Generator().manual_seed(derive_seed(seed, "augment")))[:, 0, 0, 0] == 3
        agree += (took_first == flipped).sum().item()
        total += n
    assert abs(agree / total - 0.5) < 4 * math.sqrt(0.25 / total), agree / total


def test_n_fgsm_matches_a_re_implementation():
    """N-FGSM as its paper states it: η ~ U(−2ε, 2ε) inside the image range, one step of ε on the
    sign of the gradient at x + η, no projection to the ε-ball; train mode."""
    from fastsat.attacks import NFGSM
    from fastsat.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet10", 10, (0.5,) * 3, (0.25,) * 3, width=0.125).train()
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    eps = 8 / 255
    ours = NFGSM(eps)(model, x, y, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    eta = (torch.rand(x.shape, generator=g) * 2 - 1) * 2 * eps
    eta = torch.clamp(eta, -x, 1 - x).requires_grad_(True)
    torch.nn.functional.cross_entropy(model(x + eta), y).backward()
    expected = torch.clamp(x + eta.detach() + eps * eta.grad.sign(), 0, 1)
    assert torch.allclose(ours, expected, atol=1e-6)
    assert (ours - x).abs().max() > eps + 1e-4  # unprojected: beyond the ε-ball
    assert (ours - x).abs().max() <= 3 * eps + 1e-6
    assert METHODS.get("n_fgsm").single_step
