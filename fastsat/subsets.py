"""Seeded, class-stratified subsets of a beton: the holdout split and evaluation samples.

A subset taken "first N in file order" describes whatever the file order is (on a class-sorted
beton, one class); every subset here takes the same fraction of each class, drawn from a seeded
generator, and returns sorted indices that the reports record.
"""
from __future__ import annotations

import numpy as np

from .errors import InputError
from .kernels.spec import derive_seed


def _quota(counts: np.ndarray, n: int) -> np.ndarray:
    """Per-class sample counts summing to n, proportional to ``counts`` (largest remainders)."""
    exact = counts * n / counts.sum()
    quota = np.floor(exact).astype(int)
    rest = np.argsort(-(exact - quota), kind="stable")[: n - quota.sum()]
    quota[rest] += 1
    return np.minimum(quota, counts)


def stratified(labels: np.ndarray, n: int, seed: int, purpose: str) -> np.ndarray:
    """Sorted indices of n samples, each class in proportion to its share of ``labels``, drawn from
    the stream of ``purpose`` ("holdout", "eval sample", ...)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(derive_seed(seed, purpose))
    classes, counts = np.unique(labels, return_counts=True)
    picked = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
              for c, q in zip(classes, _quota(counts, n)) if q]
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=int)


def holdout_split(labels: np.ndarray, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, holdout indices), disjoint and covering the beton. ``holdout``: a fraction
    (< 1) or a number of samples."""
    total = len(labels)
    n = int(round(holdout * total)) if holdout < 1 else int(holdout)
    if holdout >= 1 and holdout != int(holdout):
        raise InputError(f"--holdout {holdout}: a fraction below 1 or a whole number of samples")
    if not 1 <= n < total:
        raise InputError(f"--holdout {holdout} gives {n} of {total} training samples; it must leave "
                         f"at least one on each side")
    held = stratified(labels, n, seed, "holdout")
    return np.setdiff1d(np.arange(total), held), held


def per_class(labels: np.ndarray, indices: np.ndarray) -> dict[str, int]:
    """{class: count} of a subset, for the reports."""
    classes, counts = np.unique(np.asarray(labels)[indices], return_counts=True)
    return {str(int(c)): int(k) for c, k in zip(classes, counts)}
