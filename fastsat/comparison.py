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
from dataclasses import replace
import math
import sys
from pathlib import Path

from .config import TrainConfig, differing, role_names, upgrade
from .options import eps_key
from .runfiles import RunFiles
from .errors import InputError
from .files import atomic_write_text
from .methods import METHODS
from .stats import fmt, mean_ci
from .trainer import train


def headline(report: dict) -> str:
    """The row a comparison shows: the worst case (default protocol) or the strongest PGD (paper)."""
    rows = report["attacks"]
    return "worst_case" if "worst_case" in rows and report["settings"]["protocol"] == "default" else \
        max((r for r in rows if r.startswith("pgd")), key=lambda r: int(r[3:]))


MASKED = "(masked)"  # beside every robust number of a run that failed a gradient-masking check


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


def masked_seeds(summaries: list[dict]) -> int:
    """How many of a method's runs failed a gradient-masking check."""
    return sum(bool(s["robustness"].get("masked")) for s in summaries)


def side_by_side(by_method: dict[str, list[dict]]) -> str:
    first = cells(next(iter(by_method.values())))
    head = ["method", *first]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, summaries in by_method.items():
        c, masked = cells(summaries), masked_seeds(summaries)
        mark = f" {MASKED}" if masked == len(summaries) else f" ({masked} of {len(summaries)} masked)" if masked else ""
        row = [fmt(v, 0 if k in ("train s", "img/s") else 1) + (mark if "ε=" in k else "") for k, v in c.items()]
        lines.append("| " + " | ".join([method] + row) + " |")
    some = next(iter(by_method.values()))
    r = some[0]["robustness"]
    seeds = ", ".join(str(s["seed"]) for s in some)
    spread = (f"{len(some)} seeds ({seeds}): mean ± 95% t-interval across seeds" if len(some) > 1
              else f"one seed ({seeds}), so no interval across seeds")
    aa = r["settings"].get("autoattack")
    lines += ["", f"{spread}. "
              f"n = {r['n']} test images; attacks and settings as in each run's robustness.md "
              f"(protocol {r['settings']['protocol']}"
              + (f"; AutoAttack {aa['version']} by {aa['implementation']}" if aa else "") + "). "
              f"{MASKED}: the run failed a gradient-masking check, so its robust accuracy is not a verdict."]
    return "\n".join(lines)


def frontier(by_method: dict[str, list[dict]], path: Path, eps: float, title: str,
             cost: dict[str, float] | None = None) -> None:
    """Robust accuracy at ``eps`` against cost: the runs' training time (mean ± 95% interval over
    seeds), or ``cost``, seconds per training epoch timed under equal conditions, per method."""
    from .plots import save, spread_labels, subplots

    fig, ax = subplots(figsize=(6, 4))
    row = headline(next(iter(by_method.values()))[0]["robustness"])
    points = {}
    for label, summaries in by_method.items():
        t, dt = (cost[label], 0.0) if cost else mean_ci([s["train_seconds"] for s in summaries])
        acc, dacc = mean_ci([s["robustness"]["attacks"][row][eps_key(eps)] for s in summaries])
        color = "#dd8452" if METHODS.get(summaries[0]["method"]).needs_saliency else "#4c72b0"
        masked = masked_seeds(summaries) > 0  # hollow, crossed and labelled: no verdict
        ax.errorbar(t, acc, xerr=dt or None, yerr=dacc or None, fmt="X" if masked else "o", color=color, capsize=3,
                    mfc="none" if masked else color, ms=9 if masked else 6)
        points[f"{label} {MASKED}" if masked else label] = (t, acc)
    xs, ys = [p[0] for p in points.values()], [p[1] for p in points.values()]
    x_span, y_span = (max(xs) - min(xs)) or 1.0, (max(ys) - min(ys)) or 1.0
    heights = spread_labels(list(points.values()), x_near=0.25 * x_span, y_gap=0.06 * y_span)
    for (label, (t, acc)), h in zip(points.items(), heights):
        ax.annotate(label, (t, acc), xytext=(t + 0.02 * x_span, h + 0.02 * y_span), fontsize=8,
                    arrowprops=dict(arrowstyle="-", lw=0.5, color="0.5") if h > acc else None)
    ax.set_ylim(top=max(max(heights) + 0.1 * y_span, ax.get_ylim()[1]))
    ax.set_xlim(right=max(xs) + 0.2 * x_span)
    ax.set_xlabel("seconds per training epoch, timed one method after another" if cost else "training time (s)")
    ax.set_ylabel(f"{row.replace('_', ' ')} accuracy at ε={eps:g}/255 (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    save(fig, path)


def _job(cfgs: list[TrainConfig], beside: bool, threads: int, following, errors) -> None:
    """One of ``jobs`` processes: takes the next run nobody took (``following``, shared) until none is left."""
    import torch

    torch.set_num_threads(threads)
    while True:
        with following.get_lock():
            i = following.value
            following.value += 1
        if i >= len(cfgs):
            return
        try:
            run_one(cfgs[i], False, beside)
        except InputError as e:
            errors.put(f"{cfgs[i].method}, seed {cfgs[i].seed}: {e}")
            raise SystemExit(2)


def run_concurrently(cfgs: list[TrainConfig], jobs: int, beside: bool) -> None:
    """Train ``cfgs`` in ``jobs`` concurrent processes; a failing one ends them all, in one line."""
    import multiprocessing
    import multiprocessing.connection

    import torch

    ctx = multiprocessing.get_context("spawn")
    errors, following = ctx.SimpleQueue(), ctx.Value("i", 0)
    threads = max(1, torch.get_num_threads() // jobs)
    procs = [ctx.Process(target=_job, args=(cfgs, beside, threads, following, errors))
             for _ in range(min(jobs, len(cfgs)))]
    try:
        for p in procs:
            p.start()
        while True:
            alive = [p for p in procs if p.is_alive()]
            failed = [p.exitcode for p in procs if p.exitcode]
            if failed:
                raise InputError(errors.get() if not errors.empty() else f"a training job ended with code {failed[0]}")
            if not alive:
                return
            multiprocessing.connection.wait([p.sentinel for p in alive])
    finally:
        for p in procs:
            p.kill()
            p.join()


def run_one(cfg: TrainConfig, progress: bool, beside: bool = False) -> dict:
    """A finished run's summary when it was made with exactly these settings and data; else the run
    trained (from scratch, or continued from its checkpoint). A run in ``cfg.out`` made otherwise is
    refused in one line listing what differs, or (``beside``) a fresh run goes next to it."""
    out = Path(cfg.out)
    files = RunFiles(out)
    finished = files.finished()
    if files.config.is_file() and not cfg.overwrite and (finished or files.checkpoint.is_file()):
        # a run that has not reached its report may still take other evaluation settings
        diff = run_differences(out, cfg, ("run", "eval") if finished else ("run",))
        if diff and beside:
            return run_one(replace(cfg, out=str(out.with_name(f"{out.name}-{settings_hash(cfg)}"))), progress)
        if diff:
            raise InputError(f"{out} holds a run made with other settings ({'; '.join(diff)}): --overwrite replaces "
                             f"it, --beside trains a fresh run next to it")
        if finished:
            return files.read("summary")
        cfg = replace(cfg, resume=True)
    elif files.config.is_file():  # killed before its first checkpoint: nothing to keep
        cfg = replace(cfg, overwrite=True)
    return train(cfg, progress=progress)


def run_differences(out: Path, cfg: TrainConfig, roles: tuple) -> list[str]:
    """What differs between the run in ``out`` and ``cfg``: settings of ``roles`` and beton contents."""
    saved = RunFiles(out).read("config")
    diff = [f"{k}: {was!r} → {now!r}" for k, (was, now) in differing(upgrade(saved.get("config", {})), cfg, roles).items()]
    for name, want in data_ids(cfg).items():
        had = saved.get("data", {}).get(name)
        if had != want:
            diff.append(f"{name} beton content: {had or 'not recorded'} → {want}")
    return diff


def data_ids(cfg: TrainConfig) -> dict:
    """The content hash of each beton of ``cfg`` (as recorded in a run's config.json)."""
    from .beton import content_id, open_beton

    return {"train": content_id(open_beton(cfg.train).manifest), "val": content_id(open_beton(cfg.val).manifest)}


def settings_hash(cfg: TrainConfig) -> str:
    """8 hex digits naming the settings and data that make a run's numbers."""
    import hashlib

    keys = role_names("run", "eval")
    what = {k: v for k, v in dataclasses.asdict(cfg).items() if k in keys} | data_ids(cfg)
    return hashlib.blake2b(json.dumps(what, sort_keys=True).encode(), digest_size=4).hexdigest()


def compare(base: TrainConfig, methods: list[str], seeds: int, out: Path, frontier_eps: float,
            progress: bool = True, beside: bool = False, recipes: dict | None = None,
            jobs: int = 1) -> tuple[str, list[dict]]:
    """The table, and every run's summary. ``recipes``: per method, settings that replace the base
    config's (its own optimizer, schedule, ...), recorded in each run's config and in the table.
    ``jobs`` > 1: the runs are trained by that many concurrent processes first (each its share of
    the threads); their training times are then taken beside each other."""
    recipes = recipes or {}
    if seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {seeds}")
    if not any(math.isclose(frontier_eps, e) for e in base.eval_eps):
        raise InputError(f"--frontier-eps {frontier_eps:g} is not one of --eval-eps {base.eval_eps}")
    cfgs = {method: [dataclasses.replace(base, **recipes.get(method, {}), method=method, seed=base.seed + k,
                                         out=str(out / method / f"seed{base.seed + k}" if seeds > 1 else out / method)
                                         ).validate() for k in range(seeds)] for method in methods}
    if jobs > 1:
        run_concurrently([c for cs in cfgs.values() for c in cs], jobs, beside)
    by_method = {}
    for method, cs in cfgs.items():
        by_method[method] = []
        for cfg in cs:
            if progress:
                print(f"== {method}, seed {cfg.seed}", file=sys.stderr)
            # trained by the jobs: read back (not replaced again)
            by_method[method].append(run_one(replace(cfg, overwrite=False) if jobs > 1 else cfg, progress, beside))
    table = side_by_side(by_method)
    if recipes:
        table += "\n\nRecipes (settings that differ from the base config): " + "; ".join(
            f"{m}: " + ", ".join(f"{k}={v}" for k, v in r.items()) for m, r in recipes.items()) + "."
    atomic_write_text(out / "comparison.md", table + "\n")
    atomic_write_text(out / "comparison.json", json.dumps(
        {m: [{k: v for k, v in s.items() if k != "table"} for s in ss] for m, ss in by_method.items()}, indent=1))
    frontier(by_method, out / "frontier.png", frontier_eps,
             f"cost vs robustness — {base.model} (width {base.width}), {Path(base.train).name}, {seeds} seed(s)")
    return table, [s for ss in by_method.values() for s in ss]
