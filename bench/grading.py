"""Where grading time goes, and how fast it runs: the default protocol on one run's checkpoint —
seconds per attack row and ε, the image passes it makes (forward and backward) and their rate beside
training's, and the same grading on several local ranks, side by side in one run.

    python bench/grading.py --checkpoint runs/demo/fgsm_rs/best.pt [--runs 1x1,2x1,1x2] [--eval-limit 360] [--out DIR]
    python bench/grading.py --checkpoint ... --no-cascade --compare DIR/grading.json   # every attack on every sample

Evaluation settings are the run's own (as ``python -m fastsat.evaluate`` uses them) under the
default protocol with the masking checks; flags override ε, n, AutoAttack and the cascade. A pass
is one image through the model forward, or one image's gradient back through it. Training's rate
is one epoch of the run's own method and data, timed in this process with the first run's threads.
Every ``--runs`` entry (P ranks × T threads each) grades the same samples; the table gives each one's
speed-up over the first and whether it gave the first's per-sample verdict, and each rank's seconds
working and waiting for the others.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, markdown_table, write_json  # noqa: E402
from fastsat.beton import open_beton  # noqa: E402
from fastsat.config import TrainConfig, upgrade  # noqa: E402
from fastsat.distributed import run_ranks  # noqa: E402
from fastsat.robustness import eval_data, grade, sample_indices  # noqa: E402
from fastsat.runfiles import RunFiles  # noqa: E402
from fastsat.runs import load_checkpoint  # noqa: E402


class Counted(torch.nn.Module):
    """The model, counting image passes: images forward, and images whose gradient came back."""

    def __init__(self, model):
        super().__init__()
        self.model, self.forward_images, self.backward_images = model, 0, 0

    def forward(self, x):
        out = self.model(x)
        self.forward_images += len(x)
        if out.requires_grad:
            out.register_hook(lambda g, n=len(x): self._back(n))
        return out

    def _back(self, n: int) -> None:
        self.backward_images += n


def training_rate(cfg: TrainConfig, scratch: Path, threads: int) -> dict:
    """Image passes per second of one training epoch of ``cfg`` (its method, model and data) on
    ``threads`` threads."""
    from fastsat.trainer import setup, train_epoch

    import shutil

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    run = setup(replace(cfg, out=str(scratch), overwrite=True, resume=False, epochs=1), progress=False)
    run.net = counted = Counted(run.net)
    try:
        line = train_epoch(run, 0)
    finally:
        torch.set_num_threads(before)
        shutil.rmtree(scratch, ignore_errors=True)
    passes = counted.forward_images + counted.backward_images
    return {"epoch_seconds": line["epoch_seconds"], "forward": counted.forward_images,
            "backward": counted.backward_images, "passes_per_s": passes / line["epoch_seconds"]}


def graded(model, data, cfg, n_classes: int, procs: int, threads: int) -> tuple[dict, float]:
    """The grading on ``procs`` ranks of ``threads`` threads each (``run_ranks`` shares this
    process's threads among its ranks), and its wall time, rank start-up included."""
    before = torch.get_num_threads()
    torch.set_num_threads(procs * threads)
    try:
        t0 = time.perf_counter()
        report = run_ranks(procs, grade, model, data, cfg, n_classes, False)
        return report, time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)


def run(checkpoint: Path, overrides: dict, runs: list[tuple[int, int]], scratch: Path) -> dict:
    ckpt = load_checkpoint(checkpoint, "cpu")
    cfg = TrainConfig(**{**upgrade(ckpt["config"]), **overrides, "device": "cpu"}).validate()
    info = open_beton(cfg.val)
    data = eval_data(info, sample_indices(info.labels, cfg.eval_limit, cfg.seed), "cpu")
    (procs, threads), counted = runs[0], Counted(ckpt["model"])
    report, total = graded(counted, data, cfg, info.num_classes, procs, threads)  # one process: passes counted
    passes = counted.forward_images + counted.backward_images
    ranks = []
    for k, t in runs:
        other, seconds = (report, total) if not ranks else graded(ckpt["model"], data, cfg, info.num_classes, k, t)
        ranks.append({"procs": k, "threads": t, "seconds": seconds, "speedup": total / seconds,
                      "same_verdict": other["robust_indices"] == report["robust_indices"]
                      and other["attacks"] == report["attacks"], "rank_seconds": other["rank_seconds"]})
    files = RunFiles(checkpoint.parent)
    train_s = files.read("summary")["train_seconds"] if files.finished() else None
    rows = sorted(((name, e, s) for name, by in report["seconds"].items() for e, s in by.items()),
                  key=lambda r: -r[2])
    return {"machine": machine(torch.device("cpu")), "checkpoint": str(checkpoint), "n": report["n"], "total_s": total,
            "train_s": train_s, "rows": [{"row": n, "eps": e, "seconds": s, "share": s / total} for n, e, s in rows],
            "passes": {"forward": counted.forward_images, "backward": counted.backward_images,
                       "per_s": passes / total, "threads": procs * threads},
            "training": training_rate(cfg, scratch, procs * threads), "ranks": ranks,
            "settings": report["settings"], "worst_case": report["attacks"]["worst_case"], "ran_on": report["ran_on"],
            "robust_indices": report["robust_indices"], "masked": report["masked"]}


def differences(a: dict, b: dict) -> dict:
    """Per ε: samples robust in one grading and not in the other."""
    return {e: len(set(a["robust_indices"][e]) ^ set(b["robust_indices"][e])) for e in a["robust_indices"]}


def runs_arg(text: str) -> list[tuple[int, int]]:
    try:
        runs = [tuple(int(v) for v in item.split("x")) for item in text.split(",")]
    except ValueError:
        runs = []
    if not runs or any(len(r) != 2 or min(r) < 1 for r in runs) or runs[0][0] != 1:
        raise argparse.ArgumentTypeError(f"expected PxT[,PxT...] with P, T >= 1, the first one process (e.g. "
                                         f"1x1,2x1), got {text!r}")
    return runs


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="best.pt or checkpoint.pt of a run")
    ap.add_argument("--eval-limit", type=int, help="stratified test images (default: the run's)")
    ap.add_argument("--eval-eps", help="ε list in 1/255, e.g. 2,4,8 (default: the run's)")
    ap.add_argument("--eval-aa", help="AutoAttack version or list (default: the run's)")
    ap.add_argument("--cascade", action=argparse.BooleanOptionalAction, default=True,
                    help="attack only the samples earlier attacks left correct (the default protocol's way)")
    ap.add_argument("--runs", type=runs_arg, default=[(1, torch.get_num_threads())],
                    help="comma-separated gradings, side by side, each PxT: P local ranks of T threads each; the "
                         "first is one process, the baseline (passes counted, speed-ups over it); default: one process on "
                         "torch's default threads")
    ap.add_argument("--compare", type=Path, help="grading.json of the same checkpoint to compare worst cases with")
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for grading.json")
    return ap


def report_text(result: dict) -> str:
    rows = markdown_table(["row", "ε (1/255)", "seconds", "share"],
                          [[r["row"], r["eps"], f"{r['seconds']:.1f}", f"{100 * r['share']:.0f}%"]
                           for r in result["rows"]])
    ranks = markdown_table(["ranks × threads", "seconds", "speed-up", "same per-sample verdict",
                            "each rank: working / waiting s"],
                           [[f"{r['procs']} × {r['threads']}", f"{r['seconds']:.1f}", f"{r['speedup']:.2f}×",
                             r["same_verdict"], ", ".join(f"{t['working']:.0f} / {t['waiting']:.0f}"
                                                          for t in r["rank_seconds"])]
                            for r in result["ranks"]])
    p, t = result["passes"], result["training"]
    return (f"{rows}\n\n{ranks}\n\ngrading: {p['forward']} forward + {p['backward']} backward image passes in "
            f"{result['total_s']:.0f} s (n = {result['n']}): {p['per_s']:.0f} passes/s; training: "
            f"{t['passes_per_s']:.0f} passes/s ({t['forward']} + {t['backward']} in {t['epoch_seconds']:.1f} s); "
            f"ratio {p['per_s'] / t['passes_per_s']:.2f}")


def main(argv=None) -> None:
    args = parser().parse_args(argv)
    overrides = {"eval_protocol": "default", "eval_checks": True, "eval_cascade": args.cascade}  # what this bench measures
    overrides |= {k: v for k, v in {"eval_limit": args.eval_limit, "eval_aa": args.eval_aa,
                                   "eval_eps": [float(e) for e in args.eval_eps.split(",")] if args.eval_eps
                                   else None}.items() if v is not None}
    result = run(args.checkpoint, overrides, args.runs, args.out / "scratch_run")
    print(report_text(result))
    if args.compare:
        other = json.loads(args.compare.read_text())
        result["differs_from"] = {"file": str(args.compare), "samples_by_eps": differences(result, other)}
        print(f"worst case: samples that differ from {args.compare} per ε: {result['differs_from']['samples_by_eps']}")
    write_json(args.out / "grading.json", result)


if __name__ == "__main__":
    main()
