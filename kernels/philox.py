"""Philox4x32-10, the counter-based generator behind Triton's ``tl.philox``/``tl.randint``.

Written once on uint64 words masked to 32 bits, so the same function runs vectorised in numpy
(the reference) and compiled by numba (the CPU path): all three back ends draw identical bits.

Stream used by the SAT kernel: element with global offset ``o`` (in the flattened (N, H, W, C)
batch) takes word ``o & 3`` of ``philox(key=seed, counter=(o >> 2, o >> 34, 0, 0))``.
"""
from __future__ import annotations

import numpy as np

MASK32 = np.uint64(0xFFFFFFFF)
ROUND_A = np.uint64(0xD2511F53)
ROUND_B = np.uint64(0xCD9E8D57)
KEY_A = np.uint64(0x9E3779B9)
KEY_B = np.uint64(0xBB67AE85)
SHIFT32 = np.uint64(32)
ROUNDS = 10


def philox4x32(k0, k1, c0, c1, c2, c3):
    """Ten Philox rounds on 32-bit words held in uint64 (numpy arrays or numba scalars)."""
    for _ in range(ROUNDS):
        p0 = ROUND_A * c0  # exact 64-bit product of two 32-bit words
        p2 = ROUND_B * c2
        c0, c1, c2, c3 = ((p2 >> SHIFT32) ^ c1 ^ k0) & MASK32, p2 & MASK32, ((p0 >> SHIFT32) ^ c3 ^ k1) & MASK32, p0 & MASK32
        k0 = (k0 + KEY_A) & MASK32
        k1 = (k1 + KEY_B) & MASK32
    return c0, c1, c2, c3


def split_seed(seed: int) -> tuple[np.uint64, np.uint64]:
    """64-bit seed → Philox key (lo, hi), as Triton splits it."""
    if not 0 <= seed < 2**63:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32)


def draws_np(seed: int, n: int, start: int = 0) -> np.ndarray:
    """uint32 words for global element offsets start..start+n-1 of the SAT stream."""
    offsets = np.arange(start, start + n, dtype=np.uint64)
    k0, k1 = split_seed(seed)
    c0 = (offsets >> np.uint64(2)) & MASK32
    c1 = offsets >> np.uint64(34)
    zero = np.zeros_like(c0)
    words = np.stack(philox4x32(k0, k1, c0, c1, zero, zero))  # (4, n)
    lane = (offsets & np.uint64(3)).astype(np.intp)
    return words[lane, np.arange(n)].astype(np.uint32)
