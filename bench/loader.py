"""Beton write and loader read throughput on a CIFAR-layout set it writes itself (random pixels).

    python bench/loader.py [--quick] [--samples N] [--workers W] [--out DIR]

Writes N samples as the official ``cifar-10-batches-py`` pickles, converts them with the cifar10
writer plus two per-element saliency fields (teacher-map size: 384 B per sample each), then reads
it (median of 5 epochs after a warm-up) with the FFCV loader (image+label, +sal, +sal+sal2) and with
a torch DataLoader over the same in-memory samples (same batch size and workers). Needs ffcv.
"""
from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, markdown_table, write_json  # noqa: E402
from fastsat.beton import SaliencyMap, open_beton, write_beton  # noqa: E402
from fastsat.batch import Batch  # noqa: E402
from fastsat.data import make_batches  # noqa: E402
from fastsat.kernels import bits as bitlayout  # noqa: E402
from fastsat.writers import open_writer  # noqa: E402


def write_cifar_layout(root: Path, n: int, rng) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f)
    per = -(-n // 5)
    for i in range(5):
        k = min(per, n - i * per)
        with open(base / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (k, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, k).tolist()}, f)
    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}, f)


class InMemory(torch.utils.data.Dataset):
    """The same samples for torch's DataLoader: uint8 HWC image, label, packed saliency."""

    def __init__(self, images, labels, sal, sal2):
        self.images, self.labels, self.sal, self.sal2 = images, labels, sal, sal2

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]), int(self.labels[i]), torch.from_numpy(self.sal[i]), \
            torch.from_numpy(self.sal2[i])


def epoch_rate(iterable_fn, n_expected: int, epochs: int = 5) -> float:
    """images/s: median over ``epochs`` full passes, after a warm-up pass (which also compiles
    FFCV's pipeline). An epoch of 50k raw CIFAR images takes tens of ms, so one pass is noise."""
    for _ in iterable_fn():
        pass
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        seen = sum(len(b.y if isinstance(b, Batch) else b[1]) for b in iterable_fn())  # ours, or (x, y, ...)
        rates.append(seen / (time.perf_counter() - t0))
        assert seen >= n_expected * 0.9, (seen, n_expected)
    return float(np.median(rates))


def make_beton(tmp: Path, n: int, workers: int) -> tuple:
    """The CIFAR-layout set → ``tmp/c.beton`` with sal + sal2; returns (info, in-memory arrays, stats)."""
    rng = np.random.default_rng(0)
    write_cifar_layout(tmp, n, rng)
    writer = open_writer("cifar10", "train", root=tmp)
    positive = rng.random((n, 32, 32, 3)) < 0.5
    maps = {"sal": SaliencyMap("element", {"method": "random"}, bitlayout.pack_np(positive)),
            "sal2": SaliencyMap("element", {"method": "random"}, bitlayout.pack_np(~positive))}
    t0 = time.perf_counter()
    info = write_beton(writer, writer.source, tmp / "c.beton", maps=maps, workers=workers)
    stats = {"samples": n, "write_samples_per_s": n / (time.perf_counter() - t0)}
    t0 = time.perf_counter()
    open_beton(tmp / "c.beton", verify=True)
    stats["verify_samples_per_s"] = n / (time.perf_counter() - t0)
    return info, (writer.images, writer.labels, maps["sal"].packed, maps["sal2"].packed), stats


def measure(info, arrays, workers: int = 2, batch_size: int = 512, device=torch.device("cpu")) -> dict:
    """One epoch (after a warm-up epoch) of each loader over the beton / the same arrays."""
    n = info.num_samples
    results, rows = {"batch_size": batch_size, "workers": workers}, []
    for label, fields in [("ffcv image+label", []), ("ffcv +sal", ["sal"]), ("ffcv +sal+sal2", ["sal", "sal2"])]:
        b = make_batches(info, fields, batch_size=batch_size, workers=workers, device=device, train=True, seed=0)
        results[label] = epoch_rate(lambda b=b: b.epoch(0), n - batch_size)
        rows.append([label, results[label]])
    if device.type == "cuda":
        b = make_batches(info, ["sal"], batch_size=batch_size, workers=workers, device=device, train=True,
                         seed=0, resident=True)
        results["resident +sal"] = epoch_rate(lambda: b.epoch(0), n - batch_size)
        rows.append(["device-resident +sal", results["resident +sal"]])
    dl = torch.utils.data.DataLoader(InMemory(*arrays), batch_size=batch_size, shuffle=True, num_workers=workers,
                                     drop_last=True, pin_memory=device.type == "cuda", persistent_workers=True)
    results["torch DataLoader +sal+sal2"] = epoch_rate(lambda: dl, n - batch_size)
    rows.append(["torch DataLoader +sal+sal2", results["torch DataLoader +sal+sal2"]])
    results["sat_images_per_s"] = results["ffcv +sal"]
    results["saliency_overhead"] = results["ffcv image+label"] / results["ffcv +sal"] - 1
    results["table"] = markdown_table(["loader", "images/s"], rows)
    return results


def run(quick: bool = False, samples: int | None = None, workers: int = 2, batch_size: int = 512,
        device: torch.device = torch.device("cpu")) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        info, arrays, stats = make_beton(Path(tmp), samples or (10_000 if quick else 50_000), workers)
        results = {**stats, **measure(info, arrays, workers, batch_size, device)}
    results["table"] += (f"\n\nwrite {results['write_samples_per_s']:.0f} samples/s, full-hash verify "
                         f"{results['verify_samples_per_s']:.0f} samples/s; saliency adds "
                         f"{100 * results['saliency_overhead']:.1f}% to loader time")
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    args = ap.parse_args(argv)
    device = torch.device("cpu")
    results = run(args.quick, args.samples, args.workers, device=device)
    write_json(args.out / "loader.json", {"machine": machine(device), **results})
    print(results["table"])


if __name__ == "__main__":
    main()
