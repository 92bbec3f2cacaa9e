"""The SAT perturbation (Mangla et al. 2020, Eq. 9 + Algorithm 1) in one memory pass.

    δ[i] = z[i] ∈ {−1, +1} (fair coin)   with probability p = α^t  (α = 0.6^(1/10), t = epoch)
         = −s[i]                          otherwise
    x'   = clip(x + ε₀·δ, 0, 1)           (pixel space [0, 1], ε₀ = 8/255)

Three implementations share one signature ``f(x, bits, *, p, seed, granularity, eps, out_dtype)``:
  * :func:`sat_perturb_torch`  – the executable spec (plain torch + numpy Philox, any device);
  * :func:`sat_perturb_triton` – the fused Triton kernel (CUDA, or CPU under TRITON_INTERPRET=1);
  * :func:`sat_perturb_cpu`    – numba, parallel over the CPU cores.
All three draw the same Philox stream (``kernels/philox.py``), so for a given seed they return the
same bits. :func:`sat_perturb` picks one; ``FASTSAT_SAT_BACKEND``
(``triton``/``torch``/``cpu``) forces it.

Inputs: ``x`` (N, H, W, C) contiguous, uint8 (decoded images) or float16/32 in [0, 1] (hybrid
methods); ``bits`` (N, nbytes) uint8 packed by ``kernels/bits.py``. Output: (N, C, H, W) in
channels_last memory — the (N, H, W, C) buffer the kernel wrote, viewed without a copy.

One 32-bit draw r per element gives both decisions: ``(r >> 8) < round(p·2²⁴)`` picks the random
branch, ``r & 1`` is the sign z.
"""
from __future__ import annotations

import math
import os

import numpy as np
import torch

from . import bits as bitlayout
from .philox import draws_np, philox4x32, split_seed
from .spec import EPS0, random_prob  # noqa: F401 - random_prob: the schedule, re-exported

THRESHOLD_BITS = 24  # resolution of p: draws compare their top 24 bits against round(p·2²⁴)
OUT_DTYPES = (torch.float32, torch.float16)
IN_DTYPES = (torch.uint8, torch.float16, torch.float32)
INV255 = np.float32(1 / 255)  # uint8 → [0, 1]: one float32 multiply on every back end


def threshold(p: float) -> int:
    """Integer threshold T with P[(r >> 8) < T] = T / 2²⁴ ≈ p; p = 0 and p = 1 are exact."""
    if not 0.0 <= p <= 1.0 or math.isnan(p):
        raise ValueError(f"p must be in [0, 1], got {p}")
    return round(p * (1 << THRESHOLD_BITS))


def _check(x, bits, granularity, p, eps, out_dtype, out=None) -> torch.Tensor:
    """Shared contract of every back end; raises on anything it would otherwise have to copy.

    Returns the (N, H, W, C) output buffer: ``out`` when given, else a new one."""
    if x.ndim != 4:
        raise ValueError(f"x must be (N, H, W, C), got shape {tuple(x.shape)}")
    if x.dtype not in IN_DTYPES:
        raise TypeError(f"x must be one of {IN_DTYPES}, got {x.dtype}")
    if not x.is_contiguous():
        raise ValueError("x must be a contiguous (N, H, W, C) tensor (for NCHW channels_last t, pass t.permute(0, 2, 3, 1))")
    n, h, w, c = x.shape
    nbytes = bitlayout.num_bytes((h, w, c), granularity)
    if bits.dtype != torch.uint8 or tuple(bits.shape) != (n, nbytes) or not bits.is_contiguous():
        raise ValueError(f"bits must be contiguous uint8 ({n}, {nbytes}) for {granularity} saliency of a "
                         f"{h}x{w}x{c} image, got {bits.dtype} {tuple(bits.shape)}")
    if bits.device != x.device:
        raise ValueError(f"x is on {x.device} but bits on {bits.device}")
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1], got {eps}")
    threshold(p)
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be one of {OUT_DTYPES} (bf16 is too coarse for 1/255 steps)")
    if out is None:
        return torch.empty((n, h, w, c), dtype=out_dtype, device=x.device)
    if out.shape != x.shape or out.dtype != out_dtype or out.device != x.device or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {out_dtype} tensor of shape {tuple(x.shape)} on {x.device}")
    return out


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() * float(INV255) if x.dtype == torch.uint8 else x.float()


def _as_nchw(y_nhwc: torch.Tensor) -> torch.Tensor:
    return y_nhwc.permute(0, 3, 1, 2)  # channels_last view, no copy


# --- reference -----------------------------------------------------------------------------

def sat_perturb_torch(x, bits, *, p, seed, granularity, eps=EPS0, out_dtype=torch.float32, out=None):
    """The executable spec: Eq. 9 + clip written out in torch, draws from the numpy Philox."""
    out = _check(x, bits, granularity, p, eps, out_dtype, out)
    n, h, w, c = x.shape
    r = torch.from_numpy(draws_np(seed, n, h * w * c).astype(np.int64)).view(n, h, w, c).to(x.device)
    s = bitlayout.signs_torch(bits, (h, w, c), granularity)  # (N, H, W, C) ±1
    take_random = (r >> 8) < threshold(p)
    z = (r & 1).float() * 2 - 1
    delta = torch.where(take_random, z, -s)
    y = (_to_unit(x) + delta * np.float32(eps)).clamp(0.0, 1.0)
    return _as_nchw(out.copy_(y))


# --- numba CPU path ----------------------------------------------------------------------------

_cpu_kernel = None


def _build_cpu_kernel():
    import numba

    philox = numba.njit(inline="always")(philox4x32)

    @numba.njit(parallel=True, cache=True)
    def kernel(out, x, bits, n_samples, sample_elems, sample_bytes, elems_per_bit, eps, thresh, k0, k1, scale):
        zero = np.uint64(0)
        for n in numba.prange(n_samples):
            base = n * sample_elems
            bbase = n * sample_bytes
            b = 0  # saliency bit of element j, and j's place inside that bit's run of elements:
            sub = 0  # advanced by counting (no division in the loop)
            words = (zero, zero, zero, zero)
            for j in range(sample_elems):
                if j & 3 == 0:  # Philox counter (j >> 2, n): one call for four elements
                    words = philox(k0, k1, np.uint64(j >> 2), np.uint64(n), zero, zero)
                r = words[j & 3]
                rnd = np.int64((r >> np.uint64(8)) < thresh)  # Eq. 9: random with P = α^t
                z = np.int64(r & np.uint64(1))  # δ = z ...
                s_bit = np.int64((bits[bbase + (b >> 3)] >> (b & 7)) & 1)  # ... else δ = −s
                up = (rnd & z) | ((1 - rnd) & (1 - s_bit))  # branch-free: p ≈ ½ defeats prediction
                v = np.float32(x[base + j]) * scale + eps * np.float32(2 * up - 1)
                out[base + j] = min(max(v, np.float32(0.0)), np.float32(1.0))
                sub += 1
                if sub == elems_per_bit:
                    sub = 0
                    b += 1

    return kernel


def sat_perturb_cpu(x, bits, *, p, seed, granularity, eps=EPS0, out_dtype=torch.float32, out=None):
    """numba, parallel over samples; same Philox stream as the reference."""
    global _cpu_kernel
    out = _check(x, bits, granularity, p, eps, out_dtype, out)
    if x.device.type != "cpu" or x.dtype == torch.float16:
        raise ValueError("sat_perturb_cpu takes uint8 or float32 CPU tensors")
    if _cpu_kernel is None:
        _cpu_kernel = _build_cpu_kernel()
    n, h, w, c = x.shape
    y = out if out_dtype == torch.float32 else torch.empty((n, h, w, c), dtype=torch.float32)
    k0, k1 = split_seed(seed)
    scale = INV255 if x.dtype == torch.uint8 else np.float32(1.0)
    _cpu_kernel(y.view(-1).numpy(), x.view(-1).numpy(), bits.view(-1).numpy(), n, h * w * c,
                bits.shape[1], bitlayout.bits_per_channel_group((h, w, c), granularity), np.float32(eps),
                np.uint64(threshold(p)), k0, k1, scale)
    if y is not out:
        out.copy_(y)  # numba writes float32; float16 output costs one extra pass on CPU
    return _as_nchw(out)


# --- Triton -----------------------------------------------------------------------------------

import triton  # noqa: E402
import triton.language as tl  # noqa: E402


@triton.jit
def _sat_kernel(out_ptr, x_ptr, bits_ptr, sample_elems, sample_bytes, eps, thresh, seed,
                X_IS_U8: tl.constexpr, ELEMS_PER_BIT: tl.constexpr, BLOCK: tl.constexpr):
    # grid = (N, ⌈H·W·C / BLOCK⌉): one sample per row, so the sample index needs no division
    n = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # element index inside the sample
    mask = j < sample_elems
    offs = n.to(tl.int64) * sample_elems + j  # int64: N·H·W·C may pass 2³¹
    x = tl.load(x_ptr + offs, mask=mask, other=0).to(tl.float32)
    if X_IS_U8:
        x = x * 0.003921568859368563  # float32(1/255)
    b = j // ELEMS_PER_BIT  # saliency bit index (pixel granularity: C elements share a bit)
    byte = tl.load(bits_ptr + n.to(tl.int64) * sample_bytes + (b >> 3), mask=mask, other=0).to(tl.int32)
    s_bit = (byte >> (b & 7)) & 1  # 1 ⇔ s = +1
    # one Philox call per 4 elements: counter (j >> 2, n); element 4g + k takes word k
    g = (tl.program_id(1) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)).to(tl.uint32)
    zero = g * 0
    r0, r1, r2, r3 = tl.philox(seed, g, zero + n.to(tl.uint32), zero, zero)
    r = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), (BLOCK,))  # [r0, r1, r2, r3] per group
    take_random = (r >> 8).to(tl.int32) < thresh  # Eq. 9: P = α^t
    up = tl.where(take_random, (r & 1).to(tl.int32), 1 - s_bit)  # δ = z, else δ = −s
    y = x + tl.where(up != 0, eps, -eps)  # Algorithm 1: x + ε₀·δ ...
    y = tl.minimum(tl.maximum(y, 0.0), 1.0)  # ... clipped to [0, 1]
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def default_block(sample_elems: int) -> int:
    """BLOCK per program: the largest of 2048/1024/512 that pads a sample by ≤ 1/16 (measured best
    on the H200, bench/RESULTS.md); one block per sample under the interpreter (per-program overhead)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return max(4, min(1 << 16, triton.next_power_of_2(sample_elems)))
    for block in (2048, 1024, 512):
        if triton.cdiv(sample_elems, block) * block - sample_elems <= sample_elems // 16:
            return block
    return max(4, min(512, triton.next_power_of_2(sample_elems)))


def sat_perturb_triton(x, bits, *, p, seed, granularity, eps=EPS0, out_dtype=torch.float32, out=None, block=None,
                       num_warps=4):
    """Launcher of the fused kernel: asserts the contract, allocates the output, never copies."""
    out = _check(x, bits, granularity, p, eps, out_dtype, out)
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise ValueError("sat_perturb_triton needs CUDA tensors (or TRITON_INTERPRET=1 set before importing triton)")
    split_seed(seed)
    n, h, w, c = x.shape
    if out.numel() == 0:
        return _as_nchw(out)
    sample_elems = h * w * c
    block = block or default_block(sample_elems)
    assert block >= 4 and block & (block - 1) == 0, "BLOCK must be a power of two ≥ 4 (whole Philox groups)"
    grid = (n, triton.cdiv(sample_elems, block))
    _sat_kernel[grid](out, x, bits, sample_elems, bits.shape[1], float(np.float32(eps)), threshold(p), seed,
                      X_IS_U8=x.dtype == torch.uint8,
                      ELEMS_PER_BIT=bitlayout.bits_per_channel_group((h, w, c), granularity), BLOCK=block,
                      num_warps=num_warps, enable_fp_fusion=False)  # no FMA: x·(1/255) + ε rounds as in the reference
    return _as_nchw(out)


BACKENDS = {"torch": sat_perturb_torch, "cpu": sat_perturb_cpu, "triton": sat_perturb_triton}
BACKEND_ENV = "FASTSAT_SAT_BACKEND"


def backend_for(x: torch.Tensor) -> str:
    """Triton on CUDA, numba on CPU (float16 CPU input: torch); ``FASTSAT_SAT_BACKEND`` overrides."""
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{BACKEND_ENV}={forced!r}: expected one of {sorted(BACKENDS)}")
        return forced
    if x.is_cuda:
        return "triton"
    return "torch" if x.dtype == torch.float16 else "cpu"


def sat_perturb(x, bits, *, p, seed, granularity, eps=EPS0, out_dtype=torch.float32, out=None):
    """Eq. 9 + Algorithm 1 on a batch: (N, H, W, C) in, (N, C, H, W) channels_last out."""
    return BACKENDS[backend_for(x)](x, bits, p=p, seed=seed, granularity=granularity, eps=eps,
                                        out_dtype=out_dtype, out=out)
