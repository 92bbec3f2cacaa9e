"""Robustness of a model the way the paper measures it, from a run's checkpoint or in a run.

    python -m fastsat.evaluate --checkpoint runs/x/checkpoint.pt [--val B.beton] [--eval-eps 1,2,4]

Clean accuracy; PGD-k (random start, step 2/255, eval mode, last iterate) at each ε; uniform
noise; the TRADES (KL) attack; the saliency attack x − ε·s where the beton has saliency. Writes
``robustness.json``, ``robustness.md`` and ``robustness.png`` (accuracy vs ε per attack).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .attacks import PGD, SaliencyAttack, TradesAttack, UniformNoise
from .kernels import bits as bitlayout
from .methods import to_unit


def _accuracy(model, batches, attack=None, *, granularity=None, seed=0, limit=0) -> float:
    """Top-1 accuracy (%) over the batches, under ``attack`` when given (reproducible draws)."""
    model.eval()
    correct = total = 0
    for i, (x, y, sal, _) in enumerate(batches):
        if limit:
            if total >= limit:
                break
            keep = limit - total
            x, y, sal = x[:keep], y[:keep], None if sal is None else sal[:keep]
        x_unit = to_unit(x).contiguous(memory_format=torch.channels_last)
        if attack is not None:
            gen = torch.Generator(device=x.device).manual_seed(seed * 100003 + i)
            kwargs = {"generator": gen}
            if isinstance(attack, SaliencyAttack):
                kwargs["signs"] = bitlayout.signs_torch(sal, tuple(x.shape[1:]), granularity).permute(0, 3, 1, 2)
            x_unit = attack(model, x_unit, y, **kwargs)
        with torch.no_grad():
            correct += (model(x_unit).argmax(1) == y).sum().item()
        total += len(y)
    return 100.0 * correct / max(total, 1)


def clean_accuracy(model, loader, epoch: int = 0, limit: int = 0) -> float:
    return _accuracy(model, loader.epoch(epoch), limit=limit)


def robustness(model, loader, cfg, granularity=None, progress=True) -> dict:
    """Every attack of the evaluation at every ε of ``cfg``; accuracies in %."""
    from tqdm import tqdm

    step = cfg.eval_step_size / 255
    jobs = [("clean", None, None)]
    for k in cfg.eval_steps:
        jobs += [(f"pgd{k}", e, PGD(e / 255, step, k)) for e in cfg.eval_eps]
    jobs += [("noise", e, UniformNoise(e / 255)) for e in cfg.eval_noise]
    jobs += [("trades", e, TradesAttack(e / 255, step, cfg.eval_steps[0])) for e in cfg.eval_eps]
    if granularity is not None:
        jobs += [("saliency", e, SaliencyAttack(e / 255)) for e in cfg.eval_eps]
    results: dict = {}
    for j, (name, eps, attack) in enumerate(tqdm(jobs, desc="robustness", disable=not progress, leave=False)):
        acc = _accuracy(model, loader.epoch(0), attack, granularity=granularity, seed=cfg.seed + j,
                        limit=cfg.eval_limit)
        if eps is None:
            results[name] = acc
        else:
            results.setdefault(name, {})[str(eps)] = acc
    return results


def table(results: dict) -> str:
    """Markdown: one row per attack, one column per ε (in 1/255)."""
    eps = sorted({float(e) for v in results.values() if isinstance(v, dict) for e in v})
    fmt = lambda e: f"{e:g}"  # noqa: E731
    lines = ["| attack | " + " | ".join(f"ε={fmt(e)}/255" for e in eps) + " |", "|---|" + "---|" * len(eps)]
    lines.append(f"| clean | {results['clean']:.1f} |" + " |" * (len(eps) - 1))
    for name, by_eps in results.items():
        if isinstance(by_eps, dict):
            lines.append(f"| {name} | " + " | ".join(f"{by_eps[fmt(e)]:.1f}" if fmt(e) in by_eps else ""
                                                      for e in eps) + " |")
    return "\n".join(lines)


def plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, by_eps in results.items():
        if isinstance(by_eps, dict):
            xs = sorted(by_eps, key=float)
            ax.plot([float(e) for e in xs], [by_eps[e] for e in xs], marker="o", label=name)
    ax.axhline(results["clean"], color="grey", ls="--", lw=0.8, label="clean")
    ax.set_xlabel("ε (×1/255)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(results: dict, out: Path, title: str) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(results, indent=1))
    md = table(results)
    (out / "robustness.md").write_text(f"# {title}\n\n{md}\n")
    plot(results, out / "robustness.png", title)
    return md


def main(argv=None) -> int:
    import argparse

    from .beton import open_beton
    from .config import TrainConfig, parse_list
    from .data import make_batches
    from .train import load_checkpoint, pick_device
    from .writers.common import InputError

    ap = argparse.ArgumentParser(prog="python -m fastsat.evaluate", description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--val", help="beton to evaluate on (default: the run's validation beton)")
    ap.add_argument("--out", type=Path, help="report folder (default: the checkpoint's folder)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--eval-eps", help="ε list in 1/255, e.g. 1,2,3,4")
    ap.add_argument("--eval-steps", help="PGD steps list, e.g. 5,20,40")
    ap.add_argument("--eval-noise", help="noise ε list in 1/255")
    ap.add_argument("--eval-limit", type=int)
    args = ap.parse_args(argv)
    try:
        device = pick_device(args.device)
        ckpt = load_checkpoint(args.checkpoint, device)
        cfg = TrainConfig(**ckpt["config"])
        for name in ("eval_eps", "eval_steps", "eval_noise"):
            if getattr(args, name) is not None:
                setattr(cfg, name, parse_list(getattr(args, name)))
        if args.eval_limit is not None:
            cfg.eval_limit = args.eval_limit
        cfg.validate()
        info = open_beton(args.val or cfg.val)
        if info.num_classes != ckpt["num_classes"]:
            raise InputError(f"{info.path} has {info.num_classes} classes but the checkpoint's model "
                             f"has {ckpt['num_classes']}")
        fields = ["sal"] if "sal" in info.saliency else []
        loader = make_batches(info, fields, batch_size=cfg.batch_size, workers=cfg.workers, device=device,
                              train=False, seed=cfg.seed)
        results = robustness(ckpt["model"], loader, cfg, info.granularity() if fields else None)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or args.checkpoint.parent
    print(write_reports(results, out, f"{cfg.method} on {info.manifest['dataset']}/{info.manifest['split']}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
