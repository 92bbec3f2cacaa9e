"""Teacher maps at two dataset sizes: peak memory and images/s per stage of a chunked write.

    python bench/teacher_maps.py [--side 96] [--sizes 512,4096] [--model resnet10] [--chunk 256] [--out DIR]

Writes an ImageFolder of random PNG images (SIDE x SIDE, 10 classes) at each size, then, in a fresh
process per size, ``write_dataset(saliency="gbp", teacher=T)`` with an untrained teacher (speed does not
depend on the weights; fastsat's full-width CIFAR ResNet-10 by default). Reports
each process's peak resident memory (and its writer processes'), and images/s of the stages the
write records: read (decode from the layout), teacher (GBP), pack, store (chunk files), write (the
beton, images read again by the writer).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, markdown_table, write_json  # noqa: E402

STAGES = ("read", "teacher", "pack", "store", "write")


def image_folder(root: Path, n: int, side: int, seed: int = 0) -> None:
    """``n`` random SIDE x SIDE PNG images in 10 class folders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        folder = root / f"c{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def teacher(path: Path, model: str, side: int) -> None:
    """An untrained fastsat checkpoint of ``model`` for the folder layout (10 classes)."""
    from fastsat.models import build_model
    from fastsat.runs import save_checkpoint

    args = {"name": model, "width": 1.0, "num_classes": 10, "mean": [0.5] * 3, "std": [0.25] * 3,
            "image_shape": [side, side, 3]}
    net = build_model(model, 10, args["mean"], args["std"])
    save_checkpoint(path, {"config": {"model": model, "width": 1.0, "method": "standard"}, "model_args": args,
                           "identity": {"dataset": "folder"}, "epoch": 0, "model_state": net.state_dict()})


def one(root: Path, ckpt: Path, side: int, out: Path, chunk: int, sal_batch: int) -> dict:
    """In this process: the write, its stage seconds and peak memory."""
    from fastsat.write_beton import write_dataset

    timings = {}
    t0 = time.perf_counter()
    info = write_dataset("folder", "train", out, root=root, side=side, saliency="gbp", teacher=ckpt, device="cpu",
                         chunk=chunk, sal_batch=sal_batch, progress=False, timings=timings)
    return {"samples": info.num_samples, "seconds": time.perf_counter() - t0, "stages": timings,
            "file_mb": info.manifest["file_size"] / 1e6,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "writer_children_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def measure(n: int, args, tmp: Path) -> dict:
    root, ckpt = tmp / f"folder{n}", tmp / "teacher.pt"
    image_folder(root, n, args.side)
    if not ckpt.is_file():
        teacher(ckpt, args.model, args.side)
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); from bench.teacher_maps import one; "
            "from pathlib import Path; print(json.dumps(one(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), "
            "Path(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7]))))")
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).resolve().parents[1]), str(root), str(ckpt),
                           str(args.side), str(tmp / f"w{n}.beton"), str(args.chunk), str(args.sal_batch)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=96, help="image side in pixels")
    ap.add_argument("--sizes", default="512,4096", help="dataset sizes, comma-separated")
    ap.add_argument("--model", default="resnet10", help="teacher: a fastsat model name (CIFAR stem, or timm's)")
    ap.add_argument("--chunk", type=int, default=256, help="samples per chunk (write_beton --chunk)")
    ap.add_argument("--sal-batch", type=int, default=64, help="teacher batch (write_beton --sal-batch)")
    ap.add_argument("--out", type=Path, default=Path("out/bench"), help="folder of teacher_maps.json")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(n, args, Path(tmp)) for n in sizes]
    rows = [[r["samples"], f"{r['peak_rss_mb']:.0f}", f"{r['writer_children_peak_rss_mb']:.0f}",
             *[f"{r['samples'] / max(r['stages'][s], 1e-9):.0f}" for s in STAGES], f"{r['seconds']:.0f}"]
            for r in results]
    table = markdown_table(["samples", "peak RSS MB", "writer procs' peak MB", *[f"{s} img/s" for s in STAGES],
                            "total s"], rows)
    write_json(args.out / "teacher_maps.json", {"machine": machine(torch.device("cpu")), "settings": vars(args) | {
        "out": str(args.out)}, "results": results, "table": table})
    print(table)


if __name__ == "__main__":
    main()
