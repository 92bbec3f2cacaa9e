import numpy as np
import pytest
import torch

from fastsat.kernels import bits


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1023, 3 * 32 * 32, 3 * 64 * 64])
def test_round_trip_numpy_and_torch_agree(n):
    positive = np.random.rand(5, n) < 0.5
    packed = bits.pack_np(positive)
    assert packed.shape == (5, (n + 7) // 8)
    assert np.array_equal(bits.unpack_np(packed, n), positive)
    packed_t = bits.pack_torch(torch.from_numpy(positive))
    assert np.array_equal(packed_t.numpy(), packed)
    assert torch.equal(bits.unpack_torch(packed_t, n), torch.from_numpy(positive))


def test_layout_is_little_endian_hwc_order():
    # element i is bit i & 7 of byte i >> 3, elements in (H, W, C) order
    positive = np.zeros((1, 2, 3, 3), dtype=bool)
    positive[0, 1, 0, 2] = True  # flat index (1*3 + 0)*3 + 2 = 11 → byte 1, bit 3
    packed = bits.pack_np(positive)
    assert packed.tolist() == [[0, 1 << 3, 0]]


def test_padding_bits_are_zero_and_ignored():
    positive = np.ones((2, 9), dtype=bool)
    packed = bits.pack_np(positive)
    assert packed[:, 1].tolist() == [1, 1]  # only bit 0 of the last byte is used
    assert bits.unpack_np(packed, 9).all()


@pytest.mark.parametrize("shape", [(32, 32, 3), (5, 7, 3), (64, 64, 3), (3, 3, 1)])
def test_granularities(shape):
    h, w, c = shape
    assert bits.num_bytes(shape, "element") == (h * w * c + 7) // 8
    assert bits.num_bytes(shape, "pixel") == (h * w + 7) // 8
    mask = torch.rand(4, h, w) < 0.5
    packed = bits.pack_torch(mask)
    signs = bits.signs_torch(packed, shape, "pixel")  # broadcast over channels
    expected = (mask.float() * 2 - 1).unsqueeze(-1).expand(4, h, w, c)
    assert torch.equal(signs, expected)
    elem = torch.rand(4, h, w, c) < 0.5
    signs = bits.signs_torch(bits.pack_torch(elem), shape, "element")
    assert torch.equal(signs, elem.float() * 2 - 1)


def test_bad_input():
    with pytest.raises(ValueError, match="granularity"):
        bits.num_bits((2, 2, 3), "channel")
    with pytest.raises(ValueError, match="cannot hold"):
        bits.unpack_np(np.zeros((1, 2), np.uint8), 20)
    with pytest.raises(TypeError):
        bits.pack_np(np.zeros((1, 3), np.int8))
