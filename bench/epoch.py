"""Whole training epochs, loader included: the cost of SAT against standard training end to end.

    python bench/epoch.py [--samples 50000] [--loaders ffcv,resident] [--methods standard,sat,...]
                          [--model resnet18 --width 1.0] [--batch-size 512] [--epochs 3] [--compile]
                          [--no-amp] [--device cuda] [--beton PATH] [--out DIR]

A CIFAR-size beton of random pixels with one saliency field (written here through the CIFAR
writer, without ffcv where it is missing; or ``--beton``), then for each loader (FFCV streaming; device-resident through fastsat's
own reader) and method: one warm-up epoch, then the median of ``--epochs`` timed epochs
(device-synchronised wall time of the whole loop: loading, the SAT kernel, augmentation, attacks,
forward, backward, step). On CUDA the share of the epoch the GPU was busy comes from CUDA events
around each training step. Writes epoch.json, epoch.md and epoch.png; prints the table.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, markdown_table, sync, write_json  # noqa: E402
from fastsat.beton import SaliencyMap, open_beton, write_beton  # noqa: E402
from fastsat.config import TrainConfig  # noqa: E402
from fastsat.batch import step_seed  # noqa: E402
from fastsat.data import make_batches  # noqa: E402
from fastsat.ffcv_import import available as ffcv_available  # noqa: E402
from fastsat.kernels import bits as bitlayout  # noqa: E402
from fastsat.methods import METHODS, p_random, train_step  # noqa: E402
from fastsat.models import build_model  # noqa: E402

METHODS_DEFAULT = "standard,noise,sat,fgsm_rs,pgd,pgd_sat"


def make_beton(out: Path, n: int) -> Path:
    """n random CIFAR-size samples through the CIFAR writer, with one per-element saliency field,
    written to ``out`` (ffcv's writer where installed, fastsat's direct writer elsewhere)."""
    from bench.loader import write_cifar_layout
    from fastsat.writers import open_writer

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        write_cifar_layout(Path(tmp), n, rng)
        samples = open_writer("cifar10", "train", root=Path(tmp))
        sal = SaliencyMap("element", {"method": "random"}, bitlayout.pack_np(rng.random((n, 32, 32, 3)) < 0.5))
        write_beton(samples, samples.source, out, maps={"sal": sal})
    return out


def one_epoch(cfg, model, opt, batches, epoch, device, scaler) -> tuple[float, float, int]:
    """(wall seconds, GPU-busy seconds or nan, images) of one epoch."""
    cuda = device.type == "cuda"
    events = []
    seen = 0
    sync(device)
    t0 = time.perf_counter()
    for step, batch in enumerate(batches.epoch(epoch)):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
        train_step(cfg, model, opt, batch, p_random=p_random(cfg, epoch, step, len(batches)),
                   seed=step_seed(cfg.seed, 0, epoch, step), scaler=scaler)
        if cuda:
            end.record()
            events.append((start, end))
        seen += len(batch.y)
    sync(device)
    wall = time.perf_counter() - t0
    busy = sum(s.elapsed_time(e) for s, e in events) / 1e3 if cuda else float("nan")
    return wall, busy, seen


def measure(info, loader: str, method: str, args, device) -> dict:
    cfg = TrainConfig(method=method, pad=2, seed=0)
    fields = ["sal"] if METHODS.get(method).needs_saliency else []
    batches = make_batches(info, fields, batch_size=args.batch_size, workers=args.workers, device=device, train=True,
                           seed=0, resident=loader == "resident")
    torch.manual_seed(0)
    model = build_model(args.model, 10, (0.5,) * 3, (0.25,) * 3, width=args.width).to(device)
    model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and args.amp else None
    one_epoch(cfg, model, opt, batches, 0, device, scaler)  # warm-up: FFCV compiles, kernels tune
    runs = [one_epoch(cfg, model, opt, batches, e, device, scaler) for e in range(1, args.epochs + 1)]
    wall = statistics.median(r[0] for r in runs)
    busy = statistics.median(r[1] for r in runs)
    return {"loader": loader, "method": method, "epoch_s": wall, "epochs_timed": len(runs),
            "images_per_s": runs[0][2] / wall, "gpu_busy": busy / wall if device.type == "cuda" else None,
            "all_epoch_s": [r[0] for r in runs]}


def ratios(results: list[dict]) -> dict:
    out = {}
    for loader in {r["loader"] for r in results}:
        t = {r["method"]: r["epoch_s"] for r in results if r["loader"] == loader}
        if "sat" in t and "standard" in t:
            out[f"{loader}: sat / standard"] = t["sat"] / t["standard"]
        if "pgd_sat" in t and "pgd" in t:
            out[f"{loader}: pgd_sat / pgd"] = t["pgd_sat"] / t["pgd"]
    return out


def plot(results: list[dict], path: Path, title: str) -> None:
    from fastsat.plots import save, subplots

    loaders = sorted({r["loader"] for r in results})
    methods = list(dict.fromkeys(r["method"] for r in results))
    fig, ax = subplots(figsize=(7, 3.8))
    width = 0.8 / len(loaders)
    for i, loader in enumerate(loaders):
        t = {r["method"]: r["epoch_s"] for r in results if r["loader"] == loader}
        ax.bar(np.arange(len(methods)) + i * width, [t.get(m, 0) for m in methods], width, label=loader)
    ax.set_xticks(np.arange(len(methods)) + width * (len(loaders) - 1) / 2, methods)
    ax.set_ylabel("epoch seconds (median)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    save(fig, path)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50_000, help="samples in the written beton")
    ap.add_argument("--beton", type=Path, help="beton with a 'sal' field to time; written there first (random "
                    "pixels, --samples) when it does not exist (default: a temporary one)")
    ap.add_argument("--loaders", default="ffcv,resident", help="ffcv (streaming) and/or resident")
    ap.add_argument("--methods", default=METHODS_DEFAULT, help="training methods to time")
    ap.add_argument("--model", default="resnet18", help="model name (fastsat CIFAR ResNets or timm)")
    ap.add_argument("--width", type=float, default=1.0, help="channel multiplier of the fastsat ResNets")
    ap.add_argument("--batch-size", type=int, default=512, help="batch size")
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per configuration (after one warm-up)")
    ap.add_argument("--workers", type=int, default=2, help="FFCV loader threads")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--no-amp", dest="amp", action="store_false", help="float32 on CUDA (default: fp16 autocast)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    ap.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for epoch.{json,md,png}")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    loaders = [loader for loader in args.loaders.split(",") if loader != "ffcv" or ffcv_available()]
    with tempfile.TemporaryDirectory() as tmp:
        beton = args.beton or Path(tmp) / "bench.beton"
        info = open_beton(beton if beton.exists() else make_beton(beton, args.samples))
        results = []
        for loader in loaders:
            for method in args.methods.split(","):
                results.append(measure(info, loader, method, args, device))
                r = results[-1]
                print(f"{loader:9s} {method:9s} {r['epoch_s']:8.2f} s/epoch {r['images_per_s']:9.0f} img/s", flush=True)
    where = machine(device)
    setup = {k: getattr(args, k) for k in ("model", "width", "batch_size", "epochs", "compile", "amp")}
    setup["samples"] = info.num_samples
    table = markdown_table(["loader", "method", "epoch s", "images/s", "GPU busy"],
                           [[r["loader"], r["method"], r["epoch_s"], r["images_per_s"],
                             "—" if r["gpu_busy"] is None else f"{100 * r['gpu_busy']:.0f}%"] for r in results])
    table += "\n\n" + "\n".join(f"- {k}: {v:.3f}" for k, v in ratios(results).items())
    write_json(args.out / "epoch.json", {"machine": where, "setup": setup, "results": results,
                                         "ratios": ratios(results)})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "epoch.md").write_text(table + "\n")
    plot(results, args.out / "epoch.png", f"{args.model} (width {args.width}), {info.num_samples} samples, "
         f"batch {args.batch_size}, {where.get('gpu', where.get('cpu_model', ''))}")
    print(table)


if __name__ == "__main__":
    main()
