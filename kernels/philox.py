"""Philox4x32-10, the counter-based generator behind Triton's ``tl.philox``/``tl.randint``.

Written once on uint64 words masked to 32 bits, so the same function runs vectorised in numpy
(the reference) and compiled by numba (the CPU path): all three back ends draw identical bits.

Stream used by the SAT kernel: element ``j`` of sample ``n`` (j indexes the flattened (H, W, C)
sample) takes word ``j & 3`` of ``philox(key=seed, counter=(j >> 2, n, 0, 0))``: one Philox call
serves four neighbouring elements, and groups never straddle two samples.
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


def draws_np(seed: int, n_samples: int, sample_elems: int) -> np.ndarray:
    """(N, S) uint32 words of the SAT stream for N samples of S elements."""
    k0, k1 = split_seed(seed)
    groups = (sample_elems + 3) // 4
    c0 = np.broadcast_to(np.arange(groups, dtype=np.uint64), (n_samples, groups))
    c1 = np.broadcast_to(np.arange(n_samples, dtype=np.uint64)[:, None], (n_samples, groups))
    zero = np.zeros_like(c0)
    words = np.stack(philox4x32(k0, k1, c0, c1, zero, zero), axis=-1)  # (N, groups, 4)
    return words.reshape(n_samples, groups * 4)[:, :sample_elems].astype(np.uint32)
