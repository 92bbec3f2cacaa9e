"""Teacher-saliency throughput (images/s) per method: what writing a CIFAR beton with teacher maps costs.

    python bench/saliency.py [--device cpu|cuda] [--quick] [--out DIR]

Untrained teachers of the paper's two sizes (ResNet-10, ResNet-34, full width) on random CIFAR-size
images (speed does not depend on the weights), default parameters, batch 256 (64 on CPU).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, markdown_table, time_fn, write_json  # noqa: E402
from fastsat import saliency  # noqa: E402
from fastsat.models import build_model  # noqa: E402


def run(device: torch.device, quick: bool = False) -> dict:
    cuda = device.type == "cuda"
    batch = 256 if cuda else 64
    teachers = ["resnet10", "resnet34"] if not quick else ["resnet10"]
    width = 1.0 if (cuda or not quick) else 0.25
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, batch)
    rows, results = [], []
    for name in teachers:
        model = build_model(name, 10, (0.5,) * 3, (0.25,) * 3, width=width).to(device)
        for method in saliency.METHODS:
            t = time_fn(lambda: saliency.compute(method, model, images, labels, batch_size=batch, device=device,
                                                 progress=False), device, warmup=1, reps=3 if not cuda else 5)
            ips = batch / t["median_s"]
            results.append({"teacher": name, "width": width, "method": method, "batch": batch, **t,
                            "images_per_s": ips})
            rows.append([f"{name} (width {width})", method, ips])
    return {"results": results, "table": markdown_table(["teacher", "method", "images/s"], rows)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    payload = run(device, args.quick)
    info = machine(device)
    write_json(args.out / "saliency.json", {"machine": info, **payload})
    print(f"teacher saliency on {info.get('gpu', info.get('cpu_model'))}\n")
    print(payload["table"])


if __name__ == "__main__":
    main()
