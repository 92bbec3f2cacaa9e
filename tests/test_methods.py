import math

import pytest
import torch

from fastsat.attacks import FGSMRS, PGD, TradesAttack
from fastsat.kernels import bits as bitlayout
from fastsat.config import TrainConfig
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
        return training_loss(cfg, model, x, y, b, epoch=3, seed=123)[0].item()

    before = loss_now()
    for i in range(6):
        train_step(cfg, model, opt, x, y, b, epoch=3, seed=derive_seed(0, 3, i))
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
    training_loss(TrainConfig(method="sat", flip=False, pad=0), model, x, torch.zeros(32, dtype=torch.long),
                  bitlayout.pack_torch(positive), epoch=epoch, seed=9)
    up = (model.seen > 128 / 255).permute(0, 2, 3, 1).reshape(32, -1)
    follows = (up != positive).double().mean().item()  # δ = −s
    q = 1 - random_prob(epoch) / 2
    assert abs(follows - q) < 4 * math.sqrt(q * (1 - q) / up.numel()) + 1e-9


def test_saliency_method_needs_bits():
    x, y, _ = fixed_batch(4)
    with pytest.raises(InputError, match="saliency"):
        training_loss(TrainConfig(method="sat"), small_model(), x, y, None, epoch=0, seed=1)
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
