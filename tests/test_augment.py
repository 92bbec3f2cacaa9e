"""Flip / translate after the SAT perturbation: per-sample, consistent over channels, lossless."""
import torch

from fastsat.augment import augment, flip_lr, translate


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_flip_twice_is_identity_and_per_sample():
    x = torch.rand(64, 3, 8, 8)
    once = flip_lr(x, gen(1))
    assert torch.equal(flip_lr(once, gen(1)), x)  # same draws: each flipped sample flips back
    flipped = [not torch.equal(once[i], x[i]) for i in range(64)]
    for i in range(64):
        assert torch.equal(once[i], x[i].flip(-1) if flipped[i] else x[i])  # all channels alike
    assert 16 < sum(flipped) < 48  # about half


def test_translate_shifts_content_per_sample():
    n, pad = 32, 3
    x = torch.rand(n, 3, 12, 12)
    y = translate(x, pad, gen(2))
    assert y.shape == x.shape and y.is_contiguous(memory_format=torch.channels_last)
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="reflect")
    shifts = set()
    for i in range(n):  # each output is one crop of the reflect-padded input, same for all channels
        matches = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                   if torch.equal(y[i], padded[i, :, dy:dy + 12, dx:dx + 12])]
        assert matches
        shifts.add(matches[0])
    assert len(shifts) > 5
    assert torch.equal(translate(x, 0, gen(2)), x)


def test_augment_keeps_values_and_is_reproducible():
    x = torch.rand(16, 3, 10, 10)
    a = augment(x, 2, True, gen(3))
    assert torch.equal(a, augment(x, 2, True, gen(3)))
    assert not torch.equal(a, augment(x, 2, True, gen(4)))
    assert a.min() >= x.min() and a.max() <= x.max()  # rearranges pixels, never invents values
