"""SAT's cost advantage measured in one run: kernel, training step per method, (FFCV) loader.

    python bench/throughput.py [--device cpu|cuda] [--quick] [--methods standard,sat,sign] [--out DIR]

Where ffcv is installed, it writes a CIFAR-layout beton (random pixels and saliency bits: speed does
not depend on content), measures the loaders on it, and feeds every training step from the FFCV
loader (loader included in the step time). Without ffcv (or with --skip-loader) the steps run on
synthetic uint8 batches already on the device, so a GPU machine without ffcv can still run it. Output: a markdown table, DIR/throughput.json and
DIR/throughput.png (epoch cost of each method relative to standard, as the paper's Fig. 4).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import kernel as kernel_bench  # noqa: E402
from bench.common import machine, markdown_table, time_fn, write_json  # noqa: E402
from fastsat.kernels import bits as bitlayout  # noqa: E402
from fastsat.config import TrainConfig  # noqa: E402
from fastsat.batch import Batch  # noqa: E402
from fastsat.ffcv_import import available as ffcv_available  # noqa: E402
from fastsat.kernels.spec import derive_seed, random_prob  # noqa: E402
from fastsat.methods import METHODS, train_step  # noqa: E402
from fastsat.models import build_model  # noqa: E402

BENCH_METHODS = ("standard", "noise", "sat", "sign", "fgsm_rs", "n_fgsm", "pgd", "pgd_sat", "trades", "trades_sat")


def synthetic_batches(device, batch: int, nbatches: int = 4):
    """Endless batches from a few random ones already on the device (no loader)."""
    xs = torch.randint(0, 256, (nbatches, batch, 32, 32, 3), dtype=torch.uint8, device=device)
    ys = torch.randint(0, 10, (nbatches, batch), device=device)
    bs = bitlayout.pack_torch(torch.rand(nbatches * batch, 32 * 32 * 3, device=device) < 0.5).view(nbatches, batch, -1)
    while True:
        for k in range(nbatches):
            yield Batch(xs[k], ys[k], bs[k])


def loader_batches(loader):
    """Endless batches from an FFCV loader, epoch after epoch (the loader is in the timing)."""
    epoch = 0
    while True:
        yield from loader.epoch(epoch)
        epoch += 1


def step_batch_size(device) -> int:
    return 512 if device.type == "cuda" else 64


def step_throughput(device, quick: bool, source=None, methods=BENCH_METHODS):
    """images/s of one optimizer step per method: same model, batch and data for all; ``source``
    yields batches (default: synthetic ones on the device)."""
    cuda = device.type == "cuda"
    batch, width = step_batch_size(device), (1.0 if cuda else (0.25 if quick else 0.5))
    source = source or synthetic_batches(device, batch)
    results = []
    for name in methods:
        torch.manual_seed(0)
        model = build_model("resnet18", 10, (0.5,) * 3, (0.25,) * 3, width=width).to(device)
        model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler("cuda") if cuda else None
        cfg = TrainConfig(method=name, pad=0)
        state = {"i": 0}

        def step():
            i = state["i"] = state["i"] + 1
            train_step(cfg, model, opt, next(source), p_random=random_prob(5), seed=derive_seed(0, 5, i), scaler=scaler)

        reps = 40 if cuda else (6 if quick else 20)
        if name.endswith("_sat"):  # hybrids: the coin's mix needs more steps to settle
            reps *= 5
        t = time_fn(step, device, warmup=5 if cuda else 2, reps=reps)
        # epoch cost is the mean step time: hybrids mix cheap (SAT) and costly (attack) steps
        results.append({"method": name, "batch": batch, "model": f"resnet18_cifar(width={width})",
                        "amp": cuda, **t, "images_per_s": batch / t["mean_s"]})
    base = next(r for r in results if r["method"] == "standard")["mean_s"]
    for r in results:
        r["relative_to_standard"] = r["mean_s"] / base
    return results


def plot(results, path: Path, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [r["method"] for r in results]
    rel = [r["relative_to_standard"] for r in results]
    bars = ax.bar(names, rel, color=["#4c72b0" if "sat" not in n else "#dd8452" for n in names])
    ax.bar_label(bars, fmt="%.2f×")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_ylabel("step time / standard")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu or cuda (default: cuda where available)")
    ap.add_argument("--quick", action="store_true", help="narrow model, few steps (< 2 min on 2 CPU cores)")
    ap.add_argument("--out", type=Path, default=Path("out/bench"), help="folder for throughput.json / .png")
    ap.add_argument("--skip-loader", action="store_true", help="feed synthetic batches already on the device")
    ap.add_argument("--methods", default=",".join(BENCH_METHODS),
                    help="comma-separated training methods to time (standard is always timed: the ratios' base)")
    return ap


def measure_steps(args, device: torch.device, methods: list[str]) -> tuple[dict, list, str]:
    """The loader (unless skipped or without ffcv) and every method's training step fed by it."""
    if args.skip_loader or not ffcv_available():
        loader = {"skipped": "--skip-loader" if args.skip_loader else "ffcv is not installed on this machine"}
        return loader, step_throughput(device, args.quick, methods=methods), "synthetic batches already on the device"
    import tempfile  # one CIFAR-layout beton: loader benchmark, then every step fed by the FFCV loader

    from bench import loader as loader_bench
    from fastsat.data import make_batches

    with tempfile.TemporaryDirectory() as tmp:
        beton, arrays, stats = loader_bench.make_beton(Path(tmp), 10_000 if args.quick else 50_000, 2)
        loader = {**stats, **loader_bench.measure(beton, arrays, device=device)}
        feed_loader = make_batches(beton, ["sal"], batch_size=step_batch_size(device), workers=2, device=device,
                                   train=True, seed=0)
        steps = step_throughput(device, args.quick, loader_batches(feed_loader), methods)
    return loader, steps, f"the FFCV loader over a {loader['samples']}-sample CIFAR-layout beton (loader included)"


def goals_of(steps: list, loader: dict, device: torch.device) -> dict:
    """The ratios the project aims at, each beside its goal."""
    rel = {r["method"]: r["relative_to_standard"] for r in steps}
    goals = {}
    if "sat" in rel:
        goals |= {"sat_over_standard": rel["sat"], "sat_over_standard_goal": 1.03 if device.type == "cuda" else 1.10}
    if "sat" in rel and "sign" in rel:  # the random-sign control costs what SAT costs
        goals |= {"sign_over_sat": rel["sign"] / rel["sat"], "sign_over_sat_goal": 1.03}
    if "pgd" in rel and "pgd_sat" in rel:
        goals |= {"pgd_sat_over_pgd": rel["pgd_sat"] / rel["pgd"], "pgd_sat_over_pgd_goal": 0.6}
    if "sat_images_per_s" in loader:
        std_ips = next(r for r in steps if r["method"] == "sat")["images_per_s"]
        goals["loader_over_model"] = loader["sat_images_per_s"] / std_ips
        goals["loader_over_model_goal"] = 3.0
        goals["saliency_overhead"] = loader["saliency_overhead"]
        goals["saliency_overhead_goal"] = 0.05
    return goals


def show(payload: dict, ktable: str, where: str) -> None:
    steps, loader, goals = payload["train_step"], payload["loader"], payload["goals"]
    print(f"## fastsat throughput on {where} ({payload['machine']['time']})\n")
    print("### SAT kernel (copy bandwidth {:.1f} GB/s)\n".format(payload["kernel"]["copy_GB_per_s"]))
    print(ktable)
    print(f"\n### Training step (fed by {payload['train_step_feed']})\n")
    print(markdown_table(["method", "batch", "mean ms/step", "images/s", "× standard"],
                         [[r["method"], r["batch"], r["mean_s"] * 1e3, r["images_per_s"], r["relative_to_standard"]]
                          for r in steps]))
    if "table" in loader:
        print("\n### Loader\n")
        print(loader["table"])
    print("\n### Goals\n")
    for k, v in goals.items():
        if not k.endswith("_goal"):
            print(f"- {k}: {v:.3f} (goal {'≥' if k == 'loader_over_model' else '≤'} {goals[k + '_goal']})")


def main(argv=None):
    ap = parser()
    args = ap.parse_args(argv)
    methods = ["standard"] + [m for m in args.methods.split(",") if m and m != "standard"]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        ap.error(f"--methods: unknown {', '.join(unknown)} (known: {', '.join(METHODS)})")
    device = torch.device(args.device)
    info = machine(device)
    where = info.get("gpu", info.get("cpu_model", "cpu"))
    kernel, ktable = kernel_bench.run(device, quick=args.quick)
    loader, steps, feed = measure_steps(args, device, methods)
    payload = {"machine": info, "kernel": kernel, "train_step": steps, "train_step_feed": feed, "loader": loader,
               "goals": goals_of(steps, loader, device), "quick": args.quick}
    write_json(args.out / "throughput.json", payload)
    plot(steps, args.out / "throughput.png", f"step cost relative to standard — {where}")
    show(payload, ktable, where)
    return payload


if __name__ == "__main__":
    main()
