"""The constants of Eq. 9 / Algorithm 1 and the one seed derivation; imports nothing heavy.

Flag parsing reads these without loading torch's kernels or Triton.
"""
from __future__ import annotations

import hashlib

ALPHA = 0.6 ** (1 / 10)  # Eq. 9 decay: P(random) = α^t, 0.6 after 10 epochs
EPS0 = 8 / 255  # Algorithm 1 step ε₀, pixel space [0, 1]


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from integers (run seed, rank, epoch, step, ...) and purpose names ("eval",
    an attack's name, ...): blake2b of their text forms, so nearby inputs give unrelated seeds and
    a stream named by its purpose does not move when another stream is added. Every per-step draw
    of the project uses it."""
    text = "/".join(p if isinstance(p, str) else str(int(p)) for p in parts)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def random_prob(epoch: int, alpha: float = ALPHA) -> float:
    """Eq. 9 schedule as the paper writes it: probability that an element takes random noise at
    0-based ``epoch``."""
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
    return alpha**epoch
