"""Bit layout of stored saliency signs: the only place that knows bit order and padding.

A sample's signs s ∈ {−1, +1} are stored as bits (1 ⇔ s = +1) in the order of the decoded
image bytes (H, W, C), little-endian within a byte (element i is bit ``i & 7`` of byte
``i >> 3``, i.e. ``np.packbits(..., bitorder='little')``), padded with zeros to ⌈n/8⌉ bytes.

Two granularities:
  * ``element``: one bit per image element (H·W·C bits) — teacher saliency maps;
  * ``pixel``:   one bit per pixel (H·W bits), broadcast over channels — Eq. 10 boxes/masks.
"""
from __future__ import annotations

import numpy as np
import torch

GRANULARITIES = ("element", "pixel")


def check_granularity(granularity: str) -> str:
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown saliency granularity {granularity!r} (expected one of {GRANULARITIES})")
    return granularity


def num_bits(image_shape: tuple[int, int, int], granularity: str) -> int:
    """Bits per sample for an (H, W, C) image."""
    h, w, c = image_shape
    return h * w * c if check_granularity(granularity) == "element" else h * w


def num_bytes(image_shape: tuple[int, int, int], granularity: str) -> int:
    """Stored bytes per sample: ⌈bits/8⌉."""
    return (num_bits(image_shape, granularity) + 7) // 8


def bits_per_channel_group(image_shape: tuple[int, int, int], granularity: str) -> int:
    """How many consecutive image elements share one bit (1 per element, C per pixel)."""
    return 1 if check_granularity(granularity) == "element" else image_shape[2]


# --- numpy -------------------------------------------------------------------------------

def pack_np(positive: np.ndarray) -> np.ndarray:
    """(N, ...) bool (True ⇔ s = +1) → (N, ⌈n/8⌉) uint8, n = elements per sample."""
    positive = np.asarray(positive)
    if positive.dtype != np.bool_:
        raise TypeError(f"pack_np expects a bool array, got {positive.dtype}")
    flat = positive.reshape(positive.shape[0], -1)
    return np.packbits(flat, axis=1, bitorder="little")


def unpack_np(packed: np.ndarray, n: int) -> np.ndarray:
    """(N, ⌈n/8⌉) uint8 → (N, n) bool; padding bits are dropped."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 2:
        raise TypeError(f"unpack_np expects (N, nbytes) uint8, got {packed.dtype} {packed.shape}")
    if packed.shape[1] != (n + 7) // 8:
        raise ValueError(f"{packed.shape[1]} bytes per sample cannot hold exactly {n} bits")
    return np.unpackbits(packed, axis=1, count=n, bitorder="little").astype(np.bool_)


# --- torch -------------------------------------------------------------------------------

_SHIFTS = torch.arange(8, dtype=torch.uint8)


def pack_torch(positive: torch.Tensor) -> torch.Tensor:
    """(N, ...) bool → (N, ⌈n/8⌉) uint8, same layout as :func:`pack_np`, on positive's device."""
    if positive.dtype != torch.bool:
        raise TypeError(f"pack_torch expects a bool tensor, got {positive.dtype}")
    flat = positive.reshape(positive.shape[0], -1).to(torch.uint8)
    n = flat.shape[1]
    pad = (-n) % 8
    flat = torch.nn.functional.pad(flat, (0, pad))
    groups = flat.view(flat.shape[0], -1, 8)  # (N, nbytes, 8): element 8b+k is bit k of byte b
    return (groups << _SHIFTS.to(flat.device)).sum(-1, dtype=torch.uint8)


def unpack_torch(packed: torch.Tensor, n: int) -> torch.Tensor:
    """(N, ⌈n/8⌉) uint8 → (N, n) bool, on packed's device."""
    if packed.dtype != torch.uint8 or packed.ndim != 2:
        raise TypeError(f"unpack_torch expects (N, nbytes) uint8, got {packed.dtype} {tuple(packed.shape)}")
    if packed.shape[1] != (n + 7) // 8:
        raise ValueError(f"{packed.shape[1]} bytes per sample cannot hold exactly {n} bits")
    bits = (packed.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 1  # (N, nbytes, 8)
    return bits.reshape(packed.shape[0], -1)[:, :n].bool()


def signs_torch(packed: torch.Tensor, image_shape: tuple[int, int, int], granularity: str) -> torch.Tensor:
    """(N, nbytes) uint8 → (N, H, W, C) float32 signs in {−1, +1}, pixel bits broadcast over C."""
    h, w, c = image_shape
    positive = unpack_torch(packed, num_bits(image_shape, granularity))
    positive = positive.view(-1, h, w, c if granularity == "element" else 1).expand(-1, h, w, c)
    return positive.float() * 2 - 1
