"""Several methods (and seeds) on the same betons, side by side (``python -m fastsat.compare``).

Trains each method with the same config, once per seed (``OUT/<method>/seed<k>/``; finished runs
are kept and skipped, so a comparison can be completed across sittings), then writes one table —
clean and worst-case accuracy at each ε (the paper protocol: PGD), training time and images/s, each
as mean ± 95% t-interval over seeds — and the cost–robustness frontier with error bars
(``OUT/comparison.{md,json}``, ``OUT/frontier.png``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

from .config import TrainConfig
from .errors import InputError
from .files import atomic_write_text
from .methods import METHODS
from .trainer import train


def headline(report: dict) -> str:
    """The row a comparison shows: the worst case (default protocol) or the strongest PGD (paper)."""
    rows = report["attacks"]
    return "worst_case" if "worst_case" in rows and report["settings"]["protocol"] == "default" else \
        max((r for r in rows if r.startswith("pgd")), key=lambda r: int(r[3:]))


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the 95% Student-t interval (0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    from scipy.stats import t

    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def fmt(values: list[float], digits: int = 1) -> str:
    mean, half = mean_ci(values)
    return f"{mean:.{digits}f}" + (f" ± {half:.{digits}f}" if len(values) > 1 else "")


def cells(summaries: list[dict]) -> dict:
    """Per column, the values over seeds: clean, the headline row at each ε, time, images/s."""
    reports = [s["robustness"] for s in summaries]
    row = headline(reports[0])
    out = {"clean": [r["clean"] for r in reports]}
    for e in sorted(reports[0]["attacks"][row], key=float):
        out[f"{row} ε={e}/255"] = [r["attacks"][row][e] for r in reports]
    out["train s"] = [s["train_seconds"] for s in summaries]
    out["img/s"] = [s["images_per_s"] for s in summaries]
    return out


def side_by_side(by_method: dict[str, list[dict]]) -> str:
    first = cells(next(iter(by_method.values())))
    head = ["method", *first]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, summaries in by_method.items():
        c = cells(summaries)
        lines.append("| " + " | ".join([method] + [fmt(v, 0 if k in ("train s", "img/s") else 1)
                                                   for k, v in c.items()]) + " |")
    some = next(iter(by_method.values()))
    r = some[0]["robustness"]
    seeds = ", ".join(str(s["seed"]) for s in some)
    spread = (f"{len(some)} seeds ({seeds}): mean ± 95% t-interval across seeds" if len(some) > 1
              else f"one seed ({seeds}), so no interval across seeds")
    lines += ["", f"{spread}. "
              f"n = {r['n']} test images; attacks and settings as in each run's robustness.md "
              f"(protocol {r['settings']['protocol']})."]
    return "\n".join(lines)


def frontier(by_method: dict[str, list[dict]], path: Path, eps: str, title: str) -> None:
    from .plots import save, spread_labels, subplots

    fig, ax = subplots(figsize=(6, 4))
    row = headline(next(iter(by_method.values()))[0]["robustness"])
    points = {}
    for label, summaries in by_method.items():
        t, dt = mean_ci([s["train_seconds"] for s in summaries])
        acc, dacc = mean_ci([s["robustness"]["attacks"][row][eps] for s in summaries])
        color = "#dd8452" if METHODS.get(summaries[0]["method"]).needs_saliency else "#4c72b0"
        ax.errorbar(t, acc, xerr=dt or None, yerr=dacc or None, fmt="o", color=color, capsize=3)
        points[label] = (t, acc)
    xs, ys = [p[0] for p in points.values()], [p[1] for p in points.values()]
    x_span, y_span = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    heights = spread_labels(list(points.values()), x_near=0.25 * x_span, y_gap=0.06 * y_span)
    for (label, (t, acc)), h in zip(points.items(), heights):
        ax.annotate(label, (t, acc), xytext=(t + 0.02 * x_span, h + 0.02 * y_span), fontsize=8,
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5") if h > acc else None)
    ax.set_ylim(top=max(max(heights) + 0.1 * y_span, ax.get_ylim()[1]))
    ax.set_xlim(right=max(xs) + 0.2 * x_span)
    ax.set_xlabel("training time (s)")
    ax.set_ylabel(f"{row.replace('_', ' ')} accuracy at ε={eps}/255 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    save(fig, path)


def run_one(cfg: TrainConfig, progress: bool) -> dict:
    """A finished run's summary, or the run trained (again, from scratch or its checkpoint)."""
    out = Path(cfg.out)
    done = out / "summary.json"
    if done.is_file() and not cfg.overwrite:
        summary = json.loads(done.read_text())
        if summary.get("method") == cfg.method and summary.get("seed") == cfg.seed:
            return summary
    if (out / "checkpoint.pt").is_file():
        cfg = dataclasses.replace(cfg, resume=True, overwrite=False)
    elif (out / "config.json").is_file():  # killed before its first checkpoint: nothing to keep
        cfg = dataclasses.replace(cfg, overwrite=True)
    return train(cfg, progress=progress)


def compare(base: TrainConfig, methods: list[str], seeds: int, out: Path, frontier_eps: str,
            progress: bool = True) -> str:
    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
    by_method = {}
    for method in methods:
        by_method[method] = []
        for k in range(seeds):
            folder = out / method / f"seed{base.seed + k}" if seeds > 1 else out / method
            cfg = dataclasses.replace(base, method=method, seed=base.seed + k, out=str(folder)).validate()
            if progress:
                print(f"== {method}, seed {cfg.seed}", file=sys.stderr)
            by_method[method].append(run_one(cfg, progress))
    report = by_method[methods[0]][0]["robustness"]
    if frontier_eps not in report["attacks"][headline(report)]:
        raise InputError(f"--frontier-eps {frontier_eps} is not in eval_eps {base.eval_eps}")
    table = side_by_side(by_method)
    atomic_write_text(out / "comparison.md", table + "\n")
    atomic_write_text(out / "comparison.json", json.dumps(
        {m: [{k: v for k, v in s.items() if k != "table"} for s in ss] for m, ss in by_method.items()}, indent=1))
    frontier(by_method, out / "frontier.png", frontier_eps,
             f"cost vs robustness — {base.model} (width {base.width}), {Path(base.train).name}, {seeds} seed(s)")
    return table
