"""Where grading time goes: the default protocol on one run's checkpoint, seconds per attack row and
ε and per masking check, beside the run's own training time.

    python bench/grading.py --checkpoint runs/fm/students/sat_weak_map/best.pt [--eval-limit 500] [--out DIR]
    python bench/grading.py --checkpoint ... --no-cascade --compare DIR/grading.json   # every attack on every sample

Evaluation settings are the run's own (as ``python -m fastsat.evaluate`` uses them) under the
default protocol with the masking checks; flags override ε, n, AutoAttack and the cascade. Prints a
table (slowest first) and writes grading.json; ``--compare`` another grading.json of the same
checkpoint says on how many samples the per-sample worst cases differ.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine, markdown_table, write_json  # noqa: E402
from fastsat.beton import open_beton  # noqa: E402
from fastsat.config import TrainConfig, upgrade  # noqa: E402
from fastsat.robustness import eval_data, robustness, sample_indices  # noqa: E402
from fastsat.runs import load_checkpoint  # noqa: E402


def run(checkpoint: Path, overrides: dict) -> dict:
    ckpt = load_checkpoint(checkpoint, "cpu")
    cfg = TrainConfig(**{**upgrade(ckpt["config"]), **overrides, "device": "cpu"}).validate()
    info = open_beton(cfg.val)
    data = eval_data(info, sample_indices(info.labels, cfg.eval_limit, cfg.seed), "cpu")
    t0 = time.perf_counter()
    report = robustness(ckpt["model"], data, cfg, info.num_classes)
    total = time.perf_counter() - t0
    summary = checkpoint.parent / "summary.json"
    train_s = json.loads(summary.read_text())["train_seconds"] if summary.is_file() else None
    rows = sorted(((name, e, s) for name, by in report["seconds"].items() for e, s in by.items()),
                  key=lambda r: -r[2])
    return {"machine": machine(torch.device("cpu")), "checkpoint": str(checkpoint), "n": report["n"], "total_s": total,
            "train_s": train_s, "rows": [{"row": n, "eps": e, "seconds": s, "share": s / total} for n, e, s in rows],
            "settings": report["settings"], "worst_case": report["attacks"]["worst_case"], "ran_on": report["ran_on"],
            "robust_indices": report["robust_indices"], "masked": report["masked"]}


def differences(a: dict, b: dict) -> dict:
    """Per ε: samples robust in one grading and not in the other."""
    return {e: len(set(a["robust_indices"][e]) ^ set(b["robust_indices"][e])) for e in a["robust_indices"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, required=True, help="best.pt or checkpoint.pt of a run")
    ap.add_argument("--eval-limit", type=int, help="stratified test images (default: the run's)")
    ap.add_argument("--eval-eps", help="ε list in 1/255, e.g. 2,4,8 (default: the run's)")
    ap.add_argument("--eval-aa", help="AutoAttack version or list (default: the run's)")
    ap.add_argument("--cascade", action=argparse.BooleanOptionalAction, default=True,
                    help="attack only the samples earlier attacks left correct (the default protocol's way)")
    ap.add_argument("--compare", type=Path, help="grading.json of the same checkpoint to compare worst cases with")
    ap.add_argument("--out", type=Path, default=Path("bench/results"), help="folder for grading.json")
    args = ap.parse_args(argv)
    overrides = {"eval_protocol": "default", "eval_checks": True, "eval_cascade": args.cascade}  # what this bench measures
    overrides |= {k: v for k, v in {"eval_limit": args.eval_limit, "eval_aa": args.eval_aa,
                                   "eval_eps": [float(e) for e in args.eval_eps.split(",")] if args.eval_eps
                                   else None}.items() if v is not None}
    result = run(args.checkpoint, overrides)
    print(markdown_table(["row", "ε (1/255)", "seconds", "share"],
                         [[r["row"], r["eps"], f"{r['seconds']:.1f}", f"{100 * r['share']:.0f}%"] for r in result["rows"]]))
    print(f"\ntotal {result['total_s']:.0f} s for n = {result['n']}; training took "
          f"{result['train_s']:.0f} s" if result["train_s"] else f"\ntotal {result['total_s']:.0f} s")
    if args.compare:
        other = json.loads(args.compare.read_text())
        result["differs_from"] = {"file": str(args.compare), "samples_by_eps": differences(result, other)}
        print(f"worst case: samples that differ from {args.compare} per ε: {result['differs_from']['samples_by_eps']}")
    write_json(args.out / "grading.json", result)


if __name__ == "__main__":
    main()
