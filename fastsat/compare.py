"""python -m fastsat.compare: several methods on the same betons, side by side, cost vs robustness.

    python -m fastsat.compare --methods standard,noise,sat,fgsm_rs --out runs/cmp [train flags]

Trains each method with the same config (``OUT/<method>/``), then prints one table (clean, PGD
at each ε, training wall time and images/s) and draws the cost–robustness frontier: robust accuracy
at ``--frontier-eps`` against training time, one point per method (``OUT/frontier.png``).
"""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from .config import TrainConfig, build_parser, config_from_args
from .methods import METHODS
from .writers.common import InputError


def side_by_side(summaries: list[dict], steps: int) -> str:
    eps = sorted({e for s in summaries for e in s["robustness"].get(f"pgd{steps}", {})}, key=float)
    head = ["method", "clean"] + [f"PGD-{steps} ε={e}/255" for e in eps] + ["train s", "img/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        r = s["robustness"]
        cells = [s["method"], f"{r['clean']:.1f}"] + [f"{r[f'pgd{steps}'][e]:.1f}" for e in eps]
        cells += [f"{s['train_seconds']:.0f}", f"{s['images_per_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def frontier(summaries: list[dict], path: Path, eps: str, steps: int, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in summaries:
        t, acc = s["train_seconds"], s["robustness"][f"pgd{steps}"][eps]
        ax.scatter(t, acc, s=50, color="#dd8452" if "sat" in s["method"] else "#4c72b0")
        ax.annotate(s["method"], (t, acc), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(f"PGD-{steps} accuracy at ε={eps}/255 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare(base: TrainConfig, methods: list[str], out: Path, frontier_eps: str, progress: bool = True) -> str:
    from .train import train

    summaries = []
    for method in methods:
        cfg = dataclasses.replace(base, method=method, out=str(out / method)).validate()
        if progress:
            print(f"== {method}", file=sys.stderr)
        summaries.append(train(cfg, progress=progress))
    steps = base.eval_steps[0]
    if frontier_eps not in summaries[0]["robustness"][f"pgd{steps}"]:
        raise InputError(f"--frontier-eps {frontier_eps} is not in eval_eps {base.eval_eps}")
    table = side_by_side(summaries, steps)
    (out / "comparison.md").write_text(table + "\n")
    (out / "comparison.json").write_text(json.dumps([{k: v for k, v in s.items() if k != "table"}
                                                     for s in summaries], indent=1))
    frontier(summaries, out / "frontier.png", frontier_eps, steps,
             f"cost vs robustness — {base.model} (width {base.width}), {Path(base.train).name}")
    return table


def main(argv=None) -> int:
    ap = build_parser("python -m fastsat.compare", __doc__.splitlines()[0])
    ap.add_argument("--methods", default="standard,noise,sat,fgsm_rs", help="comma-separated methods")
    ap.add_argument("--frontier-eps", default=None, help="ε (1/255) of the frontier plot (default: largest eval ε)")
    args = ap.parse_args(argv)
    try:
        base = config_from_args(args)
        methods = [m for m in args.methods.split(",") if m]
        unknown = [m for m in methods if m not in METHODS]
        if unknown or not methods:
            raise InputError(f"unknown methods {unknown}; expected some of {', '.join(METHODS)}")
        out = Path(base.out)
        eps = args.frontier_eps or str(max(base.eval_eps))
        print(compare(base, methods, out, eps))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
