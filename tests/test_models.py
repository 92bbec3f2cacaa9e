import pytest
import timm
import torch

from fastsat.models import CIFAR_MODELS, build_model, relu_not_inplace


@pytest.mark.parametrize("name", CIFAR_MODELS)
def test_registered_cifar_models(name):
    assert name in timm.list_models("fastsat_*")
    model = timm.create_model(name, num_classes=7, width=0.125)
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
    # CIFAR stem: 3x3 stride 1, no max-pool → layer4 still 4x4 on 32 px
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert model.forward_features(x).shape[-2:] == (4, 4)


def test_width_and_normalize():
    narrow = build_model("resnet10", 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), width=0.25)
    full = build_model("resnet10", 10, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(narrow) < count(full) / 8
    x = torch.full((1, 3, 32, 32), 0.5)
    assert torch.equal(narrow[0](x), torch.zeros_like(x))  # normalization is the first layer


def test_relu_not_inplace():
    model = relu_not_inplace(build_model("resnet10", 10, (0.5,) * 3, (0.25,) * 3, width=0.125))
    relus = [m for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    assert relus and not any(m.inplace for m in relus)


def test_unknown_model():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet9000", 10, (0.5,) * 3, (0.25,) * 3)
