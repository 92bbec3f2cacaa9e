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
        for method in saliency.SALIENCY:
            t = time_fn(lambda: saliency.compute(method, model, images, labels, batch_size=batch, device=device,
                                                 progress=False), device, warmup=1, reps=3 if not cuda else 5)
            ips = batch / t["median_s"]
            results.append({"teacher": name, "width": width, "method": method, "batch": batch, **t,
                            "images_per_s": ips})
            rows.append([f"{name} (width {width})", method, ips])
    return {"results": results, "table": markdown_table(["teacher", "method", "images/s"], rows)}


def write_throughput(samples: int, method: str, device: torch.device) -> dict:
    """End to end: `fastsat.write_beton.write_dataset(saliency=METHOD, teacher=CKPT)` on a CIFAR-layout
    set of `samples` random images, with a ResNet-10 teacher trained one epoch on it."""
    import tempfile
    import time
    from bench.loader import write_cifar_layout
    from fastsat.config import TrainConfig
    from fastsat.trainer import train
    from fastsat.write_beton import write_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_cifar_layout(tmp, samples, np.random.default_rng(0))
        for split in ("train", "test"):
            write_dataset("cifar10", split, tmp / f"{split}.beton", root=tmp, progress=False)
        cfg = TrainConfig(train=str(tmp / "train.beton"), val=str(tmp / "train.beton"), model="resnet10",
                          method="standard", epochs=1, out=str(tmp / "teacher"), eval_eps=[1], eval_noise=[8],
                          eval_limit=64, eval_aa="none", device=device.type)
        train(cfg, progress=False)
        t0 = time.perf_counter()
        write_dataset("cifar10", "train", tmp / "sal.beton", root=tmp, saliency=method,
                      teacher=tmp / "teacher" / "checkpoint.pt", device=device.type, progress=False)
        seconds = time.perf_counter() - t0
    return {"samples": samples, "method": method, "teacher": "resnet10 (width 1.0)", "seconds": seconds,
            "images_per_s": samples / seconds}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("out/bench"))
    ap.add_argument("--write-samples", type=int, default=0,
                    help="instead: time a whole `write_beton --saliency METHOD` of this many CIFAR-size samples")
    ap.add_argument("--method", default="gbp")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if args.write_samples:
        result = write_throughput(args.write_samples, args.method, device)
        write_json(args.out / "saliency_write.json", {"machine": machine(device), **result})
        print(f"write_beton --saliency {result['method']} ({result['teacher']} teacher): {result['samples']} "
              f"samples in {result['seconds']:.1f} s = {result['images_per_s']:.0f} images/s")
        return
    payload = run(device, args.quick)
    info = machine(device)
    write_json(args.out / "saliency.json", {"machine": info, **payload})
    print(f"teacher saliency on {info.get('gpu', info.get('cpu_model'))}\n")
    print(payload["table"])


if __name__ == "__main__":
    main()
