"""python -m fastsat.signs: does a saliency map make SAT more robust than random ±ε signs at the same cost?

    python -m fastsat.signs --stage pilot --out docs/fm/signs --threads 1   # 1. the recipe pilot
    python -m fastsat.signs --stage plan --out docs/fm/signs                 # 2. the plan, committed first
    python -m fastsat.signs --stage study --out docs/fm/signs --threads 1   # 3. the study the plan fixes

Three arms on Fashion-MNIST, each seed paired across arms: ``sign`` (random ±ε₀ signs through the
SAT kernel), SAT with the silhouette (Eq. 10, no teacher) and SAT with the adversarial teacher's GBP
map (``docs/fm/teachers/t_adv``, the three-seed study's teacher; its map beton is written again and
checked against the content that study recorded). Every student keeps its last epoch (no held-out
selection), so the map drives what Eq. 9's schedule says.

The pilot (``--stage pilot``: seeds 1000 and 1001, never study seeds, reported as a pilot and never
reused as study data) trains every arm with two recipes at the study's epoch budget and picks the
one whose held-out clean accuracy moves least between consecutive epochs (:func:`choose_recipe`,
fixed before the pilot ran). The recipe then goes into the study's pre-registered plan.

``--stage plan`` writes ``plan.json`` and ``plan.md``: arms, the 20 paired seeds, the recipe, every
setting, the betons' contents, the endpoints, the claims and their tests. ``--stage study`` reads
everything it runs and every test it makes from ``plan.json`` alone, so the plan's commit fixes the
study. Every step is resumable and several processes may share it, as in ``fastsat.reproduce``.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: Ctrl-C while the libraries load is one line too
    from fastsat.errors import quiet_ctrl_c

    quiet_ctrl_c()

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
from .reproduce import BUDGETS, MAPS, Steps
from .runfiles import RunFiles
from .schedule import Step, run_plan, slug, status

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
            f"\n\nRule: {choice['rule']}\n\nMedian largest jump: " +
            ", ".join(f"{r} {v:.1f}" for r, v in choice["median_largest_jump"].items()) +
            "; mean last-epoch held-out clean: " +
            ", ".join(f"{r} {v:.1f}" for r, v in choice["mean_last_holdout_clean"].items()) +
            f".\n\n**Chosen recipe: {choice['chosen']}** ({RECIPES[choice['chosen']]}).\n")
    atomic_write_text(out / "pilot" / "pilot.md", text)
    return text


STUDY_SEEDS = tuple(range(2000, 2020))  # paired: every arm trains every seed
MASKING_SEEDS = STUDY_SEEDS[:3]  # graded with the default protocol too (masking checks)
STUDY_EVAL = {"select": "last", "eval_limit": 0, "eval_eps": [4, 8], "eval_steps": [20], "eval_aa": "none",
              "eval_checks": False, "eval_noise": [8]}  # every student's own report: PGD-20 on all test images
DEFAULT_EVAL = {**{k: v for k, v in BUDGETS["full"].items() if k.startswith("eval_")}, "eval_steps": [20],
                "eval_protocol": "default"}  # the three-seed study's default protocol, on its 500-image sample
CLAIMS = {"silhouette − sign": ("sat (silhouette)", "sign (random ±ε)"),
          "adv-teacher GBP − sign": ("sat (adv-teacher GBP)", "sign (random ±ε)")}
MARGIN = 1.0  # points: the TOST equivalence margin of an undecided claim
PRIMARY = {"row": "pgd20", "eps": "8"}
BETONS = {"train": ("base", "train"), "test": ("base", "test"), "gbp_adv": ("gbp_adv", "train")}


def planning_sd(label: str, old: Path = Path("docs/fm/results.json")) -> float:
    """The per-seed SD of ``label`` − sign at PGD-5 8/255 in the three-seed study (the only prior figure;
    another recipe and checkpoint rule, so an assumption, not a measurement of this design)."""
    import numpy as np

    res = json.loads(old.read_text())
    name = {"sat (silhouette)": "sat (weak map)"}.get(label, label)
    d = np.subtract(res[name]["PGD-5"]["acc"]["8"], res["sign (random ±ε)"]["PGD-5"]["acc"]["8"])
    return float(d.std(ddof=1))


def make_plan(out: Path, steps: Steps) -> dict:
    """The study's plan from the pilot's choice, the constants above and the betons' contents."""
    from .beton import content_id, open_beton
    from .stats import ALPHA_FAMILY, detectable, equivalence_reach

    pilot = out / "pilot" / "pilot.json"
    if not pilot.is_file():
        raise InputError(f"{pilot}: the pilot is not finished (run --stage pilot first)")
    chosen = json.loads(pilot.read_text())["choice"]["chosen"]
    tests = 2 * len(CLAIMS)
    sds = {c: planning_sd(left) for c, (left, _) in CLAIMS.items()}
    reach = {c: {"planning_sd": round(sd, 2), "detectable_80pct": round(detectable(sd, len(STUDY_SEEDS), tests), 2),
                 "equivalent_if_within": round(equivalence_reach(sd, len(STUDY_SEEDS), MARGIN), 2)}
             for c, sd in sds.items()}
    return {"question": "Does SAT's saliency map make a student more robust than random ±ε signs at the same cost?",
            "arms": {a: {"method": m, "train_beton": b} for a, (m, b) in ARMS.items()},
            "seeds": list(STUDY_SEEDS), "recipe": chosen,
            "student": {**BUDGETS["full"], **STUDY_EVAL, **RECIPES[chosen], "device": "cpu"},
            "checkpoint": "the last epoch (checkpoint.pt); no held-out selection",
            "betons": {k: content_id(open_beton(steps.path(*v)).manifest) for k, v in BETONS.items()},
            "primary": {**PRIMARY, "what": "PGD-20 accuracy at 8/255 on all 10,000 test images"},
            "secondary": ["PGD-20 at 4/255 (all test images)", "clean accuracy (all test images)",
                          "the default protocol's worst case on its 500-image sample (masking seeds only)"],
            "claims": {c: list(v) for c, v in CLAIMS.items()},
            "tests": f"per claim, two one-sided paired t tests of the primary endpoint's per-seed difference "
                     f"(df {len(STUDY_SEEDS) - 1}); Holm over all {tests} at family-wise alpha {ALPHA_FAMILY}",
            "alpha": ALPHA_FAMILY, "equivalence": {"margin": MARGIN, "test": "paired TOST at alpha 0.05, "
                                                   "reported for a claim the tests leave undecided"},
            "masking": {"seeds": list(MASKING_SEEDS), "protocol": DEFAULT_EVAL,
                        "rule": "a failed masking check in either arm of a claim voids that claim"},
            "secondary_tests": "none: secondary endpoints are reported as paired differences with 95% intervals",
            "reach": reach, "pilot": str(pilot)}


def plan_md(plan: dict) -> str:
    reach = "; ".join(f"{c}: SD {r['planning_sd']} → a difference of {r['detectable_80pct']} points, and "
                      f"equivalence when the observed mean lies within ±{r['equivalent_if_within']}"
                      for c, r in plan["reach"].items())
    return (f"# Plan: does the map beat random signs? (fixed before any study result)\n\n{plan['question']}\n\n"
            f"- Arms: {', '.join(plan['arms'])}; the same {len(plan['seeds'])} seeds "
            f"({plan['seeds'][0]}–{plan['seeds'][-1]}) for each.\n"
            f"- Recipe (the pilot's choice, `pilot/pilot.md`): {plan['recipe']} "
            f"({RECIPES[plan['recipe']]}), {plan['student']['epochs']} epochs, batch {plan['student']['batch_size']}.\n"
            f"- Checkpoint: {plan['checkpoint']}.\n- Primary endpoint: {plan['primary']['what']}.\n"
            f"- Secondary: {'; '.join(plan['secondary'])}. {plan['secondary_tests']}.\n"
            f"- Claims: {', '.join(plan['claims'])}; {plan['tests']}. An undecided claim: TOST at "
            f"±{plan['equivalence']['margin']:g} point.\n"
            f"- Masking: seeds {', '.join(map(str, plan['masking']['seeds']))} of every arm get the default protocol; "
            f"{plan['masking']['rule']}.\n"
            f"- Reach, if the per-seed SD of a difference were the three-seed study's (PGD-5 8/255; another recipe "
            f"and checkpoint rule, so an assumption): the true difference found with 80% power at Holm's first "
            f"step, and the TOST's: {reach}.\n")


def write_plan(out: Path, steps: Steps) -> str:
    """OUT/plan.json and plan.md; a plan already there is never changed."""
    path, plan = out / "plan.json", make_plan(out, steps)
    if path.is_file():
        if json.loads(path.read_text()) != json.loads(json.dumps(plan)):
            raise InputError(f"{path} exists and the plan made now differs: a plan is never rewritten")
        return plan_md(plan)
    atomic_write_text(path, json.dumps(plan, indent=1))
    atomic_write_text(out / "plan.md", plan_md(plan))
    return plan_md(plan)


def read_plan(out: Path) -> dict:
    path = out / "plan.json"
    if not path.is_file():
        raise InputError(f"{path}: no plan (run --stage plan and commit it before the study)")
    return json.loads(path.read_text())


def study_configs(plan: dict, out: Path, steps: Steps) -> dict[tuple[str, int], TrainConfig]:
    base = replace(TrainConfig(**plan["student"]), val=str(steps.path(*BETONS["test"])))
    return {(arm, seed): replace(base, method=a["method"], seed=seed, train=str(steps.path(*BETONS[a["train_beton"]])),
                                 out=str(out / "study" / slug(arm) / f"seed{seed}")).validate()
            for seed in plan["seeds"] for arm, a in plan["arms"].items()}


def default_folder(cfg: TrainConfig) -> Path:
    return Path(cfg.out) / "default"


def default_protocol(cfg: TrainConfig, settings: dict) -> dict:
    """The last epoch graded with the default protocol on its sample, reports in RUN/default/."""
    from .beton import open_beton
    from .robustness import grade_beton
    from .runs import load_checkpoint, pick_device

    device = pick_device(cfg.device)
    ckpt = load_checkpoint(RunFiles(cfg.out).checkpoint, device)
    return grade_beton(ckpt["model"], open_beton(cfg.val), replace(cfg, **settings), device, default_folder(cfg),
                       f"{cfg.method} seed {cfg.seed}: the default protocol")[0]


def study_steps(out: Path, plan: dict, steps: Steps) -> tuple[list[Step], dict]:
    """Betons (checked against the plan), then seed by seed every arm's student, and the masking seeds'
    default protocol right after their students."""
    used = ["test", *dict.fromkeys(a["train_beton"] for a in plan["arms"].values())]
    todo = [Step(f"beton {k}", (), partial(planned_beton, steps, plan, k),
                 partial(steps.beton, *BETONS[k], MAPS.get(BETONS[k][0]))) for k in used]
    cfgs = study_configs(plan, out, steps)
    for (arm, seed), cfg in cfgs.items():
        name = f"study {arm} seed {seed}"
        todo.append(Step(name, ("beton test", f"beton {plan['arms'][arm]['train_beton']}"), RunFiles(cfg.out).finished,
                         partial(steps.train, Path(cfg.out), cfg)))
        if seed in plan["masking"]["seeds"]:
            todo.append(Step(f"default protocol {arm} seed {seed}", (name,),
                             RunFiles(default_folder(cfg)).report.is_file,
                             partial(default_protocol, cfg, plan["masking"]["protocol"])))
    return todo, cfgs


def planned_beton(steps: Steps, plan: dict, key: str) -> bool:
    """Whether beton ``key`` is written; one that holds other content than the plan fixed is refused."""
    from .beton import content_id, open_beton

    path = steps.path(*BETONS[key])
    if path.is_file() and content_id(open_beton(path).manifest) != plan["betons"][key]:
        raise InputError(f"{path} holds other content than the plan fixed ({plan['betons'][key][:12]}…)")
    return path.is_file()


ENDPOINTS = {"PGD-20 8/255": ("pgd20", "8"), "PGD-20 4/255": ("pgd20", "4"), "clean": None}  # primary first


def endpoint(report: dict, where) -> float:
    return report["clean"] if where is None else report["attacks"][where[0]][where[1]]


def differences(arms: dict, left: str, right: str, *key: str) -> list[float]:
    """Per-seed left − right of one endpoint (``key``: its path in an arm's record)."""
    def values(arm):
        v = arms[arm]
        for k in key:
            v = v[k]
        return v
    return [x - y for x, y in zip(values(left), values(right))]


def study_results(plan: dict, cfgs: dict) -> dict:
    """Per arm every endpoint over the seeds (seed order) and the masking seeds' default protocol; per
    claim the primary test's decision (Holm, then TOST where undecided) and the secondary differences."""
    from .stats import mean_ci, paired, two_sided_claims

    arms = {arm: {"seeds": [], **{e: [] for e in ENDPOINTS}, "default": {"seeds": [], "worst_case_8": [], "masked": []}}
            for arm in plan["arms"]}
    n = None
    for (arm, seed), cfg in cfgs.items():
        rob, a = RunFiles(cfg.out).read("summary")["robustness"], arms[arm]
        a["seeds"].append(seed)
        n = rob["n"]
        for e, where in ENDPOINTS.items():
            a[e].append(endpoint(rob, where))
        if seed in plan["masking"]["seeds"]:
            d = RunFiles(default_folder(cfg)).read("report")
            a["default"]["seeds"].append(seed)
            a["default"]["worst_case_8"].append(d["attacks"]["worst_case"]["8"])
            a["default"]["masked"].append(bool(d.get("masked")))
    primary = next(iter(ENDPOINTS))
    decided = two_sided_claims({c: differences(arms, *lr, primary) for c, lr in plan["claims"].items()},
                               plan["equivalence"]["margin"], plan["alpha"])
    claims = {}
    for c, (left, right) in plan["claims"].items():
        void = any(arms[left]["default"]["masked"] + arms[right]["default"]["masked"])
        secondary = {e: paired(differences(arms, left, right, e)) for e in ENDPOINTS if e != primary}
        secondary["default worst case 8/255"] = paired(differences(arms, left, right, "default", "worst_case_8"))
        claims[c] = {"left": left, "right": right, "secondary": secondary,
                     "primary": {**decided[c], **({"decision": "void (masked)"} if void else {})}}
    summary = {arm: {e: dict(zip(("mean", "half"), mean_ci(a[e]))) for e in ENDPOINTS} for arm, a in arms.items()}
    return {"plan": "plan.json", "n_test": n, "arms": arms, "summary": summary, "claims": claims}


def reading(res: dict) -> str:
    """One sentence per claim, read from results.json and nothing else."""
    out = []
    for c, r in res["claims"].items():
        p, seeds = r["primary"], len(res["arms"][r["left"]]["seeds"])
        says = {"higher": f"the map is higher (Holm, family-wise α = 0.05; p = {p['p_higher']:.2g})",
                "lower": f"the map is lower (Holm, family-wise α = 0.05; p = {p['p_lower']:.2g})",
                "void (masked)": "void: a masking check failed"}.get(p["decision"])
        if says is None:
            t = p["tost"]
            says = ("undecided by the tests, and equivalent within ±{m:g} point (TOST p = {p:.2g})" if t["equivalent"]
                    else "undecided: neither a difference nor equivalence within ±{m:g} point is shown (TOST p = "
                         "{p:.2g})").format(m=t["margin"], p=t["p"])
        out.append(f"- **{r['left']} − {r['right']}**, {next(iter(ENDPOINTS))} on {res['n_test']:,} test images, "
                   f"{seeds} paired seeds: {p['mean']:+.1f} points (95% interval {p['ci'][0]:+.1f} to "
                   f"{p['ci'][1]:+.1f}); {says}.")
    return "\n".join(out)


def results_md(res: dict) -> str:
    from .stats import fmt

    eps = list(ENDPOINTS)
    lines = ["| arm | " + " | ".join(eps) + " | default worst case 8/255 (masking seeds) | masked |",
             "|---|" + "---|" * (len(eps) + 2)]
    for arm, a in res["arms"].items():
        lines.append(f"| {arm} | " + " | ".join(fmt(a[e]) for e in eps) +
                     f" | {fmt(a['default']['worst_case_8'])} | {sum(a['default']['masked'])} of "
                     f"{len(a['default']['masked'])} |")
    claims = ["| claim | endpoint | difference | 95% interval | p (higher) | p (lower) | decision | TOST p |",
              "|---|---|---|---|---|---|---|---|"]
    for c, r in res["claims"].items():
        p = r["primary"]
        tost = f"{p['tost']['p']:.3g}" if "tost" in p else "–"
        claims.append(f"| {c} | {eps[0]} (primary) | {p['mean']:+.2f} | {p['ci'][0]:+.2f} to {p['ci'][1]:+.2f} | "
                      f"{p['p_higher']:.3g} | {p['p_lower']:.3g} | {p['decision']} | {tost} |")
        claims += [f"| {c} | {e} | {s['mean']:+.2f} | {s['ci'][0]:+.2f} to {s['ci'][1]:+.2f} | – | – | "
                   f"descriptive (n = {s['n']}) | – |" for e, s in r["secondary"].items()]
    return (f"# Does the map beat random signs? Results (the plan: `plan.md`)\n\nMean ± 95% t-interval over seeds; "
            f"test endpoints on n = {res['n_test']:,} images.\n\n" + "\n".join(lines) + "\n\nPaired differences "
            "(map − sign, points); the primary tests decide under Holm over all four one-sided tests:\n\n" +
            "\n".join(claims) + "\n\n" + reading(res) + "\n")


def study(out: Path, steps: Steps, show_status: bool) -> str:
    plan = read_plan(out)
    todo, cfgs = study_steps(out, plan, steps)
    if show_status:
        return status(out, todo)
    run_plan(out, todo)
    res = study_results(plan, cfgs)
    atomic_write_text(out / "results.json", json.dumps(res, indent=1))
    atomic_write_text(out / "results.md", results_md(res))
    return results_md(res)


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
    steps.record.update(command=f"python -m fastsat.signs --stage STAGE --out {args.out} (STAGE: pilot, plan, study)",
                        settings={"pilot": {**BUDGETS["full"], **PILOT_EVAL, "recipes": RECIPES,
                                            "seeds": list(PILOT_SEEDS)}, "study": "plan.json"})
    if args.stage == "plan":
        return write_plan(args.out, steps)
    if args.stage == "study":
        return study(args.out, steps, args.status)
    todo, final = pilot_plan(args.out, steps)
    if args.status:
        return status(args.out, todo)
    run_plan(args.out, todo)
    return final()


def parser() -> ArgumentParser:
    ap = ArgumentParser(prog="python -m fastsat.signs", description=__doc__.split("\n\n")[0])
    ap.add_argument("--stage", choices=["pilot", "plan", "study"], default="pilot",
                    help="pilot: the recipe pilot (2 seeds per arm and recipe, seeds 1000-1001); plan: write "
                         "OUT/plan.json and plan.md from the pilot's choice (never rewritten); study: run what "
                         "OUT/plan.json fixes and write OUT/results.json and results.md")
    ap.add_argument("--out", type=Path, default=Path("docs/fm/signs"), help="folder of everything it makes")
    ap.add_argument("--teachers", type=Path, default=TEACHERS, help="folder of the teachers (t_adv/best.pt)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads of this process (0: torch's default); "
                    "several processes may run the same command on one --out")
    ap.add_argument("--status", action="store_true", help="say which steps of the stage are done, running, ready "
                    "or waiting, and run nothing")
    return ap


def main(argv=None) -> int:
    return run_cli(lambda: signs(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
