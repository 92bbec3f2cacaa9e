"""Beton write and loader read throughput on a CIFAR-layout set it writes itself (random pixels).

    python bench/loader.py [--quick] [--samples N] [--workers W] [--out DIR]

Writes N samples as the official ``cifar-10-batches-py`` pickles, converts them with the cifar10
writer plus two per-element saliency fields (teacher-map size: 384 B per sample each), then reads
one epoch with the FFCV loader (image+label, +sal, +sal+sal2) and with a torch DataLoader over the
same in-memory samples (same batch size and workers). Needs ffcv.
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


def epoch_rate(iterable_fn, n_expected: int) -> float:
    """images/s of one full pass (after a warm-up pass that also compiles FFCV's pipeline)."""
    for _ in iterable_fn():
        pass
    t0 = time.perf_counter()
    seen = sum(len(batch[1]) for batch in iterable_fn())
    dt = time.perf_counter() - t0
    assert seen >= n_expected * 0.9, (seen, n_expected)
    return seen / dt


def run(quick: bool = False, samples: int | None = None, workers: int = 2, batch_size: int = 512,
        device: torch.device = torch.device("cpu")) -> dict:
    n = samples or (10_000 if quick else 50_000)
    rng = np.random.default_rng(0)
    results = {"samples": n, "batch_size": batch_size, "workers": workers}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cifar_layout(tmp, n, rng)
        writer = open_writer("cifar10", tmp, "train")
        positive = rng.random((n, 32, 32, 3)) < 0.5
        maps = {"sal": SaliencyMap("element", {"method": "random"}, bitlayout.pack_np(positive)),
                "sal2": SaliencyMap("element", {"method": "random"}, bitlayout.pack_np(~positive))}
        t0 = time.perf_counter()
        info = write_beton(writer, writer.source, tmp / "c.beton", maps=maps, workers=workers)
        results["write_samples_per_s"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        open_beton(tmp / "c.beton", verify=True)
        results["verify_samples_per_s"] = n / (time.perf_counter() - t0)

        rows = []
        for label, fields in [("ffcv image+label", []), ("ffcv +sal", ["sal"]), ("ffcv +sal+sal2", ["sal", "sal2"])]:
            b = make_batches(info, fields, batch_size=batch_size, workers=workers, device=device, train=True, seed=0)
            rate = epoch_rate(lambda b=b: b.epoch(0), n - batch_size)
            results[label] = rate
            rows.append([label, rate])
        if device.type == "cuda":
            b = make_batches(info, ["sal"], batch_size=batch_size, workers=workers, device=device, train=True,
                             seed=0, resident=True)
            results["resident +sal"] = epoch_rate(lambda: b.epoch(0), n - batch_size)
            rows.append(["device-resident +sal", results["resident +sal"]])
        ds = InMemory(writer.images, writer.labels, maps["sal"].packed, maps["sal2"].packed)
        dl = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                         drop_last=True, pin_memory=device.type == "cuda", persistent_workers=True)
        results["torch DataLoader +sal+sal2"] = epoch_rate(lambda: dl, n - batch_size)
        rows.append(["torch DataLoader +sal+sal2", results["torch DataLoader +sal+sal2"]])
    results["sat_images_per_s"] = results["ffcv +sal"]
    results["saliency_overhead"] = results["ffcv image+label"] / results["ffcv +sal"] - 1
    results["table"] = markdown_table(["loader", "images/s"], rows) + (
        f"\n\nwrite {results['write_samples_per_s']:.0f} samples/s, full-hash verify "
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
