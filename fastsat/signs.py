"""python -m fastsat.signs: does a saliency map make SAT more robust than random ±ε signs at the same cost?

    python -m fastsat.signs --stage pilot --out docs/fm/signs --threads 1

Three arms on Fashion-MNIST, each seed paired across arms: ``sign`` (random ±ε₀ signs through the
SAT kernel), SAT with the silhouette (Eq. 10, no teacher) and SAT with the adversarial teacher's GBP
map (``docs/fm/teachers/t_adv``, the three-seed study's teacher; its map beton is written again and
checked against the content that study recorded). Every student keeps its last epoch (no held-out
selection), so the map drives what Eq. 9's schedule says.

The pilot (``--stage pilot``: seeds 1000 and 1001, never study seeds, reported as a pilot and never
reused as study data) trains every arm with two recipes at the study's epoch budget and picks the
one whose held-out clean accuracy moves least between consecutive epochs (:func:`choose_recipe`,
fixed before the pilot ran). The recipe then goes into the study's pre-registered plan.
Every step is resumable and several processes may share it, as in ``fastsat.reproduce``.
"""
from __future__ import annotations

import json
import statistics
import sys
from argparse import Namespace
from dataclasses import replace
from functools import partial
from pathlib import Path

from .config import TrainConfig
from .errors import ArgumentParser, InputError, run_cli
from .files import atomic_write_text
from .reproduce import BUDGETS, Steps
from .runfiles import RunFiles
from .schedule import Step, run_plan, slug

ARMS = {  # label → (method, training beton of fastsat.reproduce's MAPS, or "train": the silhouette)
    "sign (random ±ε)": ("sign", "train"),
    "sat (silhouette)": ("sat", "train"),
    "sat (adv-teacher GBP)": ("sat", "gbp_adv"),
}
RECIPES = {  # the pilot's two recipes at the three-seed study's budget (BUDGETS["full"]: 4 epochs, batch 128)
    "adam": {"optimizer": "adam", "lr": 2e-3},  # the three-seed study's: Adam, constant rate
    "sgd": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "lr_schedule": "onecycle"},  # momentum 0.9
}
PILOT_SEEDS = (1000, 1001)
PILOT_EVAL = {"select": "last", "eval_eps": [4, 8], "eval_steps": [20], "eval_aa": "none", "eval_checks": False,
              "eval_noise": [8], "eval_limit": 1000}  # the pilot's own look at robustness: PGD-20 only
TEACHERS = Path("docs/fm/teachers")  # the three-seed study's teachers (their checkpoints are committed)


def largest_jump(metrics: list[dict]) -> float:
    """The largest change of held-out clean accuracy between consecutive epochs (points)."""
    acc = [m["holdout_clean"] for m in metrics]
    return max((abs(b - a) for a, b in zip(acc, acc[1:])), default=0.0)


def choose_recipe(jumps: dict[str, list[float]], last_clean: dict[str, list[float]]) -> dict:
    """The pilot's rule, fixed before it ran. Per recipe, the median over its students (every arm and
    pilot seed) of each student's largest epoch-to-epoch change of held-out clean accuracy; the
    recipe with the smaller median wins, unless its mean last-epoch held-out clean accuracy is more
    than 5 points below the other's (stability bought by not learning). A tie keeps Adam (the paper's)."""
    med = {r: statistics.median(v) for r, v in jumps.items()}
    clean = {r: statistics.mean(v) for r, v in last_clean.items()}
    eligible = [r for r in med if clean[r] >= max(clean.values()) - 5.0]
    chosen = min(eligible, key=lambda r: (med[r], r != "adam"))
    return {"chosen": chosen, "median_largest_jump": med, "mean_last_holdout_clean": clean,
            "rule": choose_recipe.__doc__.split("\n\n")[0].split(". ", 1)[1].replace("\n   ", "").strip()}


def pilot_configs(out: Path, steps: Steps) -> dict[tuple[str, str, int], TrainConfig]:
    base = replace(TrainConfig(**BUDGETS["full"], device="cpu"), **PILOT_EVAL,
                   val=str(steps.path("base", "test")))
    return {(recipe, arm, seed): replace(base, **RECIPES[recipe], method=method, seed=seed,
                                         train=str(steps.path("base" if beton == "train" else beton)),
                                         out=str(out / "pilot" / recipe / slug(arm) / f"seed{seed}")).validate()
            for recipe in RECIPES for arm, (method, beton) in ARMS.items() for seed in PILOT_SEEDS}


def pilot_plan(out: Path, steps: Steps) -> tuple[list[Step], callable]:
    from .reproduce import MAPS

    todo = [Step(f"beton {split}", (), steps.path("base", split).is_file, partial(steps.beton, "base", split))
            for split in ("train", "test")]
    todo.append(Step("beton gbp_adv", (), steps.path("gbp_adv").is_file,
                     partial(steps.beton, "gbp_adv", "train", MAPS["gbp_adv"])))
    cfgs = pilot_configs(out, steps)
    for (recipe, arm, seed), cfg in cfgs.items():
        beton = ARMS[arm][1]
        todo.append(Step(f"pilot {recipe} {arm} seed {seed}", (f"beton {beton}", "beton test"),
                         RunFiles(cfg.out).finished, partial(steps.train, Path(cfg.out), cfg)))
    return todo, partial(pilot_report, out, cfgs)


def pilot_report(out: Path, cfgs: dict) -> str:
    """OUT/pilot/pilot.json and pilot.md: per student its held-out clean accuracy per epoch, its largest
    jump and its test PGD-20; per recipe the rule's figures and the choice."""
    from .runs import metrics

    students, jumps, last = [], {r: [] for r in RECIPES}, {r: [] for r in RECIPES}
    for (recipe, arm, seed), cfg in cfgs.items():
        m = metrics(Path(cfg.out))
        summary = RunFiles(cfg.out).read("summary")
        rob = summary["robustness"]
        students.append({"recipe": recipe, "arm": arm, "seed": seed,
                         "holdout_clean": [round(x["holdout_clean"], 1) for x in m],
                         "largest_jump": round(largest_jump(m), 1), "test_clean": round(rob["clean"], 1),
                         "test_pgd20": {e: round(v, 1) for e, v in rob["attacks"]["pgd20"].items()}, "n": rob["n"]})
        jumps[recipe].append(largest_jump(m))
        last[recipe].append(m[-1]["holdout_clean"])
    choice = choose_recipe(jumps, last)
    atomic_write_text(out / "pilot" / "pilot.json", json.dumps({"recipes": RECIPES, "seeds": PILOT_SEEDS,
                                                                 "choice": choice, "students": students}, indent=1))
    lines = ["| recipe | arm | seed | held-out clean per epoch | largest jump | test clean | test PGD-20 4/255 | 8/255 |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {s['recipe']} | {s['arm']} | {s['seed']} | {' → '.join(map(str, s['holdout_clean']))} | "
              f"{s['largest_jump']} | {s['test_clean']} | {s['test_pgd20']['4']} | {s['test_pgd20']['8']} |"
              for s in students]
    text = (f"# Pilot (seeds {', '.join(map(str, PILOT_SEEDS))}; never study data)\n\n" + "\n".join(lines) +
            f"\n\nRule: {choice['rule']}.\n\nMedian largest jump: " +
            ", ".join(f"{r} {v:.1f}" for r, v in choice["median_largest_jump"].items()) +
            "; mean last-epoch held-out clean: " +
            ", ".join(f"{r} {v:.1f}" for r, v in choice["mean_last_holdout_clean"].items()) +
            f".\n\n**Chosen recipe: {choice['chosen']}** ({RECIPES[choice['chosen']]}).\n")
    atomic_write_text(out / "pilot" / "pilot.md", text)
    return text


def signs(args) -> str:
    import torch

    if args.threads < 0:
        raise InputError(f"--threads must be >= 0, got {args.threads}")
    if not RunFiles(args.teachers / "t_adv").best.is_file():
        raise InputError(f"{args.teachers}: no adversarial teacher (t_adv/best.pt) there")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    steps = Steps(args.out, Namespace(dataset="fashion-mnist", root=None, budget="full", device="cpu", seed=0,
                                      seeds=1, out=args.out), teachers=args.teachers)
    steps.record.update(command=f"python -m fastsat.signs --stage {args.stage} --out {args.out}",
                        settings={**BUDGETS["full"], **PILOT_EVAL, "recipes": RECIPES, "seeds": list(PILOT_SEEDS)})
    todo, final = pilot_plan(args.out, steps)
    run_plan(args.out, todo)
    return final()


def parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m fastsat.signs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=["pilot"], default="pilot", help="pilot: the recipe pilot (2 seeds per arm "
                    "and recipe, seeds 1000-1001)")
    ap.add_argument("--out", type=Path, default=Path("docs/fm/signs"), help="folder of everything it makes")
    ap.add_argument("--teachers", type=Path, default=TEACHERS, help="folder of the teachers (t_adv/best.pt)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of this process (0: torch's default); "
                    "several processes may run the same command on one --out")
    return ap


def main(argv=None) -> int:
    return run_cli(lambda: signs(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
