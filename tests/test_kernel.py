"""The fused SAT kernel against its reference (Eq. 9 + clip), on CPU through Triton's interpreter."""
import math

import pytest
import torch

from fastsat.kernels import bits as bitlayout
from fastsat.kernels import sat
from fastsat.kernels.spec import derive_seed

SHAPES = [(1, 1, 1, 1), (7, 1, 1, 1), (1, 3, 5, 3), (7, 32, 32, 3), (2, 64, 64, 3), (3, 9, 7, 1), (5, 28, 28, 1)]
GRANULARITIES = ["element", "pixel"]
CUDA = torch.cuda.is_available()


def _triton(x, b, out=None, **kw):
    """The Triton launcher on CUDA when there is one (else the interpreter), results on the CPU."""
    if not CUDA:
        return sat.sat_perturb_triton(x, b, out=out, **kw)
    y = sat.sat_perturb_triton(x.cuda(), b.cuda(), **kw).cpu()
    return y if out is None else sat._as_nchw(out.copy_(y.permute(0, 2, 3, 1)))


FAST = {"triton": _triton, "cpu": sat.sat_perturb_cpu}


def batch(shape, granularity, dtype=torch.uint8):
    n, h, w, c = shape
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    if dtype != torch.uint8:
        x = torch.rand(shape).to(dtype)
    positive = torch.rand(n, bitlayout.num_bits((h, w, c), granularity)) < 0.5
    return x, bitlayout.pack_torch(positive)


def signs(b, shape, granularity):
    return bitlayout.signs_torch(b, shape[1:], granularity).permute(0, 3, 1, 2)


def unit(x):
    return (x.float() / 255 if x.dtype == torch.uint8 else x.float()).permute(0, 3, 1, 2)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("p", [0.0, 0.37, 1.0])
def test_fast_paths_equal_reference(backend, shape, granularity, p):
    x, b = batch(shape, granularity)
    kw = dict(p=p, seed=987654321, granularity=granularity)
    ref = sat.sat_perturb_torch(x, b, **kw)
    poison = torch.full(shape, float("nan"))
    got = FAST[backend](x, b, **kw, out=poison)
    assert not got.isnan().any()  # every element written
    assert torch.equal(got, ref)
    assert got.shape == (shape[0], shape[3], shape[1], shape[2])
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert got.data_ptr() == poison.data_ptr()  # a view of the buffer, no copy


@pytest.mark.parametrize("in_dtype,out_dtype,backends", [
    (torch.uint8, torch.float16, ["triton", "cpu"]),
    (torch.float32, torch.float32, ["triton", "cpu"]),
    (torch.float32, torch.float16, ["triton", "cpu"]),
    (torch.float16, torch.float32, ["triton"]),
    (torch.float16, torch.float16, ["triton"]),
])
def test_dtypes(in_dtype, out_dtype, backends):
    shape = (5, 7, 9, 3)
    x, b = batch(shape, "element", in_dtype)
    kw = dict(p=0.5, seed=3, granularity="element", out_dtype=out_dtype)
    ref = sat.sat_perturb_torch(x, b, **kw)
    assert ref.dtype == out_dtype
    for name in backends:
        assert torch.equal(FAST[name](x, b, **kw), ref), name


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_p0_is_the_saliency_step(granularity):
    shape = (4, 11, 13, 3)
    x, b = batch(shape, granularity)
    expected = (unit(x) - sat.EPS0 * signs(b, shape, granularity)).clamp(0, 1)
    for f in [sat.sat_perturb_torch, *FAST.values()]:
        a = f(x, b, p=0.0, seed=1, granularity=granularity)
        c = f(x, b, p=0.0, seed=2, granularity=granularity)
        assert torch.equal(a, c)  # no randomness at all
        torch.testing.assert_close(a, expected, rtol=0, atol=1e-6)


def test_p1_ignores_saliency_and_balances_signs():
    shape = (16, 32, 32, 3)
    x = torch.full(shape, 128, dtype=torch.uint8)  # mid-grey: no clipping
    b1 = bitlayout.pack_torch(torch.ones(16, 32 * 32 * 3, dtype=torch.bool))
    b0 = bitlayout.pack_torch(torch.zeros(16, 32 * 32 * 3, dtype=torch.bool))
    for f in [sat.sat_perturb_torch, *FAST.values()]:
        y1 = f(x, b1, p=1.0, seed=5, granularity="element")
        y0 = f(x, b0, p=1.0, seed=5, granularity="element")
        assert torch.equal(y1, y0)
        up = (y1 > 128 / 255).double().mean().item()
        n = x.numel()
        assert abs(up - 0.5) < 4 * math.sqrt(0.25 / n)


@pytest.mark.parametrize("p", [0.1, 0.6, 0.9])
@pytest.mark.parametrize("backend", FAST)
def test_mix_rate(p, backend):
    shape = (32, 32, 32, 3)
    x = torch.full(shape, 128, dtype=torch.uint8)
    positive = torch.rand(32, 32 * 32 * 3) < 0.5
    b = bitlayout.pack_torch(positive)
    y = FAST[backend](x, b, p=p, seed=11, granularity="element")
    delta_up = (y > 128 / 255).permute(0, 2, 3, 1).reshape(32, -1)
    follows = (delta_up != positive).double().mean().item()  # δ = −s
    q = 1 - p / 2
    assert abs(follows - q) < 4 * math.sqrt(q * (1 - q) / x.numel())


@pytest.mark.parametrize("backend", FAST)
def test_bounds(backend):
    shape = (8, 16, 16, 3)
    x, b = batch(shape, "pixel")
    x[0] = 0
    x[1] = 255
    y = FAST[backend](x, b, p=0.5, seed=2, granularity="pixel")
    assert y.min() >= 0 and y.max() <= 1
    assert (y - unit(x)).abs().max() <= sat.EPS0 + 1e-6
    assert (y[0] == 0).any() and (y[1] == 1).any()  # clipping happens


@pytest.mark.parametrize("backend", FAST)
def test_reproducible_seeds(backend):
    x, b = batch((3, 8, 8, 3), "element")
    f = FAST[backend]
    a = f(x, b, p=0.5, seed=derive_seed(0, 1, 2), granularity="element")
    assert torch.equal(a, f(x, b, p=0.5, seed=derive_seed(0, 1, 2), granularity="element"))
    for other in [derive_seed(1, 1, 2), derive_seed(0, 2, 2), derive_seed(0, 1, 3)]:
        assert not torch.equal(a, f(x, b, p=0.5, seed=other, granularity="element"))


def test_large_seed_and_offsets_match_reference():
    # a seed above 2**32 exercises the high key word
    x, b = batch((2, 32, 32, 3), "element")
    kw = dict(p=0.5, seed=2**62 + 12345, granularity="element")
    ref = sat.sat_perturb_torch(x, b, **kw)
    assert torch.equal(_triton(x, b, **kw), ref)
    assert torch.equal(sat.sat_perturb_cpu(x, b, **kw), ref)


def test_schedule():
    assert sat.random_prob(0) == 1.0
    assert sat.random_prob(10) == pytest.approx(0.6)
    assert sat.random_prob(20) == pytest.approx(0.36)
    assert sat.threshold(0.0) == 0 and sat.threshold(1.0) == 1 << 24
    with pytest.raises(ValueError):
        sat.threshold(1.5)
    with pytest.raises(ValueError):
        sat.random_prob(-1)


def test_dispatcher(monkeypatch):
    x, b = batch((2, 4, 4, 3), "element")
    assert sat.backend_for(x) == "cpu"
    assert sat.backend_for(x.half()) == "torch"
    monkeypatch.setenv(sat.BACKEND_ENV, "triton")
    assert sat.backend_for(x) == "triton"
    if CUDA:
        x, b = x.cuda(), b.cuda()
    assert torch.equal(sat.sat_perturb(x, b, p=0.3, seed=4, granularity="element").cpu(),
                       sat.sat_perturb_torch(x, b, p=0.3, seed=4, granularity="element").cpu())
    monkeypatch.setenv(sat.BACKEND_ENV, "cuda-please")
    with pytest.raises(ValueError, match="FASTSAT_SAT_BACKEND"):
        sat.backend_for(x)


@pytest.mark.parametrize("f", [sat.sat_perturb_torch, sat.sat_perturb_triton, sat.sat_perturb_cpu])
def test_contract(f):
    x, b = batch((2, 4, 4, 3), "element")
    with pytest.raises(ValueError, match="contiguous"):
        f(x.permute(0, 2, 1, 3), b, p=0.1, seed=1, granularity="element")
    with pytest.raises(ValueError, match="bits must be"):
        f(x, b[:, :-1], p=0.1, seed=1, granularity="element")
    with pytest.raises(ValueError, match="bits must be"):
        f(x, b, p=0.1, seed=1, granularity="pixel")
    with pytest.raises(TypeError, match="out_dtype"):
        f(x, b, p=0.1, seed=1, granularity="element", out_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="p must be"):
        f(x, b, p=1.1, seed=1, granularity="element")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
def test_cuda_kernel_matches_reference(granularity, out_dtype):
    x, b = batch((64, 32, 32, 3), granularity)
    kw = dict(p=0.4, seed=77, granularity=granularity, out_dtype=out_dtype)
    ref = sat.sat_perturb_torch(x, b, **kw)
    got = sat.sat_perturb(x.cuda(), b.cuda(), **kw).cpu()
    assert torch.equal(got, ref)  # same Philox stream, no FMA contraction: bit-identical


@pytest.mark.parametrize("block", [4, 16, 64])
@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_triton_several_blocks_per_sample(block, granularity):
    # S = 105: not a multiple of 4 or of the block, so groups and blocks end mid-sample
    shape = (3, 5, 7, 3)
    x, b = batch(shape, granularity)
    kw = dict(p=0.5, seed=42, granularity=granularity)
    if CUDA:
        got = sat.sat_perturb_triton(x.cuda(), b.cuda(), block=block, **kw).cpu()
    else:
        got = sat.sat_perturb_triton(x, b, block=block, **kw)
    assert torch.equal(got, sat.sat_perturb_torch(x, b, **kw))


def test_default_block_pads_little(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    for elems in [1, 7, 3 * 32 * 32, 3 * 64 * 64, 3 * 224 * 224, 1023]:
        block = sat.default_block(elems)
        assert block >= 4 and block & (block - 1) == 0
        padded = -(-elems // block) * block
        assert padded - elems <= max(elems // 16, block - 1)
    assert sat.default_block(3 * 32 * 32) == 1024
