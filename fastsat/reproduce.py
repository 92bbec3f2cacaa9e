"""python -m fastsat.reproduce: the paper's protocol on one dataset, end to end and resumable.

    python -m fastsat.reproduce --dataset fashion-mnist --out runs/fm --budget full

1. betons of the dataset's official files, the weak map (Fashion-MNIST: the silhouette) stored;
2. teachers: a standard and a PGD-trained narrow ResNet-10;
3. training betons with teacher maps: GBP of each teacher, the PGD teacher's Grad-CAM++ box, and
   both of the PGD teacher's maps for the per-sample mix (paper Table 7);
4. students, one model and epoch budget for all: standard, noise, SAT (weak map), SAT (standard
   teacher GBP), SAT (adversarial teacher GBP), SAT (adversarial teacher box), SAT (two maps mixed),
   FGSM-RS, PGD, PGD-SAT;
5. each student's selected checkpoint evaluated twice: the default protocol (PGD-20, AutoAttack,
   worst case, masking checks) on a stratified sample of the test set, and clean accuracy with the
   paper's PGD-5 (plus the one-step saliency, stored-map and noise rows) on the whole test set;
6. every student's first training epoch timed again, one student after another in one process
   (OUT/timing.json): the cost the table, the claims and the frontier use, since the students'
   own wall times were taken beside other processes;
7. OUT/table.md (rows = methods, columns = ε), OUT/frontier.png, OUT/grid_<teacher>.png.
Every step is skipped when its output exists, so the whole can be completed across sittings
(run the same command again); several processes running the same command on one folder share the
steps (``--threads 1`` each on a small CPU machine). ``--budget quick`` is a minutes-long smoke run
of the same steps.
"""
from __future__ import annotations

if __name__ == "__main__":  # run as a command: Ctrl-C while the libraries load is one line too
    from fastsat.errors import quiet_ctrl_c

    quiet_ctrl_c()

import json
import os
import sys
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .beton import content_id, manifest_path, open_beton
from .comparison import MASKED, run_one, side_by_side
from .config import TrainConfig
from .errors import ArgumentParser, InputError, run_cli
from .files import Locked, atomic_write_text
from .runfiles import RunFiles, read_json
from .runs import pick_device
from .schedule import Step, run_plan, slug, status
from .stats import claims, fmt, half_width
from .write_beton import write_dataset
from .writers import open_writer

BUDGETS = {  # TrainConfig settings per budget (the model and epochs every run shares)
    "quick": {"model": "resnet10", "width": 0.125, "epochs": 1, "batch_size": 64, "lr": 2e-3, "pad": 2,
              "gpu_resident": True, "select_limit": 64, "select_steps": 3, "eval_limit": 32, "eval_eps": [8],
              "eval_noise": [8], "eval_aa": "apgd-ce", "eval_aa_steps": 5, "eval_checks": False},
    "full": {"model": "resnet10", "width": 0.25, "epochs": 4, "batch_size": 128, "lr": 2e-3, "pad": 2,
             "select_limit": 1000, "select_steps": 10, "eval_limit": 500, "eval_eps": [2, 4, 8],
             "eval_noise": [8, 32], "eval_aa": "apgd-ce,apgd-dlr", "eval_aa_steps": 100, "eval_checks": True},
}
# The budgets fit the 2-core CPU machine: "full" trains on the whole training split and grades with
# AutoAttack on a 500-image stratified sample (AutoAttack and the masking checks cost hundreds of
# gradient steps per image), and with PGD-5 on the whole test set (FULL_TEST).
FULL_TEST = {"quick": 64, "full": 0}  # test images of the PGD-5 columns (0: all)
TEACHERS = {  # name → (method, the checkpoint whose maps are used): the standard teacher's last epoch
    "t_std": ("standard", RunFiles.CHECKPOINT),  # (robust selection means nothing for it), the PGD
    "t_adv": ("pgd", RunFiles.BEST),  # teacher's epoch of best holdout PGD accuracy
}
MAPS = {  # training beton → write_dataset's saliency keywords (teachers by name)
    "gbp_std": {"saliency": "gbp", "teacher": "t_std"},
    "gbp_adv": {"saliency": "gbp", "teacher": "t_adv"},
    "box_adv": {"saliency": "gradcam_pp_box", "teacher": "t_adv"},
    "mix_adv": {"saliency": "gbp", "teacher": "t_adv", "saliency2": "gradcam_pp_box"},
}
STUDENTS = {  # label → (method, training beton, extra settings)
    "standard": ("standard", "train", {}),
    "noise": ("noise", "train", {}),
    "sat (weak map)": ("sat", "train", {}),
    "sat (std-teacher GBP)": ("sat", "gbp_std", {}),
    "sat (adv-teacher GBP)": ("sat", "gbp_adv", {}),
    "sat (adv-teacher box)": ("sat", "box_adv", {}),
    "sat (GBP + box mixed)": ("sat", "mix_adv", {"sal_mix": True}),
    "sign (random ±ε)": ("sign", "train", {}),
    "fgsm_rs": ("fgsm_rs", "train", {}),
    "n_fgsm": ("n_fgsm", "train", {}),
    "pgd": ("pgd", "train", {}),
    "pgd_sat (adv-teacher GBP)": ("pgd_sat", "gbp_adv", {}),
}


def command(args) -> str:
    """The command line that makes (or completes) this folder."""
    root = f" --root {args.root}" if args.root else ""
    return (f"python -m fastsat.reproduce --dataset {args.dataset}{root} --budget {args.budget} --out {args.out} "
            f"--device {args.device} --seed {args.seed}" + (f" --seeds {args.seeds}" if args.seeds > 1 else ""))


class Steps:
    """Where each output lives, and a record of what ran (OUT/reproduce.json)."""

    def __init__(self, out: Path, args, teachers: Path | None = None):
        self.out, self.args = out, args
        self.teachers = teachers or out / "teachers"  # where the teachers whose maps are written live
        self.record_path = out / "reproduce.json"
        self.record = read_json(self.record_path) if self.record_path.is_file() else {
            "command": command(args), "budget": args.budget,
            "settings": BUDGETS[args.budget], "steps": {}}
        if not (isinstance(self.record, dict) and isinstance(self.record.get("steps"), dict)):
            raise InputError(f"{self.record_path}: a damaged record (no table of steps); its steps' outputs are "
                             f"what counts — remove it to start a new record")

    def done(self, name: str, seconds: float) -> None:
        with Locked(self.record_path):  # several processes record their steps in one file
            if self.record_path.is_file():  # other processes' steps too
                self.record["steps"] = read_json(self.record_path)["steps"]
            self.record["steps"][name] = {"seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                                          "pid": os.getpid(), "threads": torch.get_num_threads()}
            atomic_write_text(self.record_path, json.dumps(self.record, indent=1))

    def path(self, name: str, split: str = "train") -> Path:
        """Where beton ``name`` (``base``: the dataset's own, with its weak map) of ``split`` lives."""
        return self.out / "data" / (f"{split}.beton" if name == "base" else f"{name}_{split}.beton")

    def beton(self, name: str, split: str = "train", maps: dict | None = None) -> Path:
        path = self.path(name, split)
        if path.is_file():
            open_beton(path)  # validated, then reused
            return path
        t0 = time.perf_counter()
        path.parent.mkdir(parents=True, exist_ok=True)
        maps = {k: self.teachers / v / TEACHERS[v][1] if v in TEACHERS else v for k, v in (maps or {}).items()}
        write_dataset(self.args.dataset, split, path, device=self.args.device, root=self.args.root,
                      **maps)  # its errors (and Ctrl-C) reach reproduce's one error line
        self.same_as_trained_on(path)
        self.done(f"beton {path.name}", time.perf_counter() - t0)
        return path

    def same_as_trained_on(self, path: Path) -> None:
        """A beton written again (a fresh clone keeps the runs' records, not their betons) must hold
        what the finished runs recorded having used, or one study would mix two versions of a map."""
        now = content_id(open_beton(path).manifest)
        for record in sorted(self.out.glob("*/**/config.json")):
            saved = read_json(record)
            for name in ("train", "val"):
                had = saved.get("data", {}).get(name)
                if Path(saved.get("config", {}).get(name, "")) == path and had not in (None, now):
                    path.unlink()
                    manifest_path(path).unlink()
                    raise InputError(f"{path} written again differs from the one {record.parent} used "
                                     f"(content {had[:12]}… → {now[:12]}…)")

    def train(self, folder: Path, cfg: TrainConfig) -> dict:
        fresh, t0 = not RunFiles(folder).finished(), time.perf_counter()
        summary = run_one(cfg, progress=True)  # a finished run is read back, not trained again
        if fresh:
            self.done(f"train {folder.relative_to(self.out)}", time.perf_counter() - t0)
        return summary


def full_test(run: Path, cfg: TrainConfig, limit: int) -> dict:
    """Clean accuracy and the paper's PGD-5 (with the one-step saliency, stored-map and noise rows)
    on ``limit`` test images (0: all) — cheap enough for the whole test set."""
    from .robustness import grade_beton
    from .runs import load_checkpoint

    folder = run / "full_test"
    if RunFiles(folder).report.is_file():
        return RunFiles(folder).read("report")
    device = pick_device(cfg.device)
    ckpt = load_checkpoint(RunFiles(run).best, device)
    pgd5 = replace(cfg, eval_steps=[5], eval_aa="none", eval_checks=False, eval_cascade=False, eval_limit=limit)
    return grade_beton(ckpt["model"], open_beton(cfg.val), pgd5, device, folder,
                       f"{cfg.method}: clean and PGD-5 on the test set")[0]


CLAIMS = [  # the paper's claims: (claim, left student, right student, "better" or "not worse")
    ("SAT > noise (silhouette map)", "sat (weak map)", "noise", "better"),
    ("SAT > noise (adversarial-teacher GBP)", "sat (adv-teacher GBP)", "noise", "better"),
    ("noise > standard", "noise", "standard", "better"),
    ("adversarial-teacher maps > standard-teacher maps (GBP)", "sat (adv-teacher GBP)", "sat (std-teacher GBP)",
     "better"),
    ("fine maps > boxes (adversarial teacher)", "sat (adv-teacher GBP)", "sat (adv-teacher box)", "better"),
    ("two maps mixed ≥ one map (paper Table 7)", "sat (GBP + box mixed)", "sat (adv-teacher GBP)", "not worse"),
    ("PGD-SAT ≥ PGD", "pgd_sat (adv-teacher GBP)", "pgd", "not worse"),
    # the claim the paper implies and never tests: the map, not ±ε noise, makes SAT robust
    *[(f"{label} > random signs", label, "sign (random ±ε)", "better")
      for label in ("sat (weak map)", "sat (std-teacher GBP)", "sat (adv-teacher GBP)", "sat (adv-teacher box)",
                    "sat (GBP + box mixed)")],
]


def results(summaries: dict[str, list[dict]], tests: dict[str, list[dict]], timing: dict | None = None) -> dict:
    """The numbers the claims are read from, per student and seed (lists in seed order): the default
    protocol's worst case (on its sample) and the whole test set's PGD-5, with n, the masking
    verdict, the training time, and (``timing``: OUT/timing.json) one epoch timed alone."""
    def by_eps(reports, row):
        return {e: [r["attacks"][row][e] for r in reports] for e in reports[0]["attacks"][row]}
    out = {}
    for label, ss in summaries.items():
        reports = [s["robustness"] for s in ss]
        out[label] = {"seeds": [s["seed"] for s in ss], "train_seconds": [s["train_seconds"] for s in ss],
                      "selected": [s["selected"] for s in ss],
                      "masked": any(r.get("masked") for r in reports),
                      "worst case": {"n": reports[0]["n"], "acc": by_eps(reports, "worst_case")},
                      "PGD-5": {"n": tests[label][0]["n"], "acc": by_eps(tests[label], "pgd5")}}
        if timing and label in timing:
            out[label]["epoch_seconds"] = timing[label]["epoch_seconds"]
    return out


def table(students: dict[str, list[dict]], tests: dict[str, list[dict]]) -> str:
    """Default-protocol table (worst case, with clean and cost), then clean and PGD-5 on the test set;
    every cell over the seeds of each student (mean ± 95% t-interval from two seeds on)."""
    main = side_by_side(students)
    first = next(iter(tests.values()))[0]
    eps = sorted(first["attacks"]["pgd5"], key=float)
    n_default = next(iter(students.values()))[0]["robustness"]["n"]
    head = ["method", "clean"] + [f"PGD-5 ε={e}/255" for e in eps]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, rs in tests.items():
        mark = f" {MASKED}" if any(s["robustness"].get("masked") for s in students[label]) else ""
        lines.append("| " + " | ".join([label, fmt([r["clean"] for r in rs])] +
                                       [fmt([r["attacks"]["pgd5"][e] for r in rs]) + mark for e in eps]) + " |")
    return (f"Default protocol on a stratified sample of n = {n_default} test images (95% interval of one "
            f"accuracy: at most ± {half_width(n_default):.1f} points):\n\n{main}\n\n{selections(students)}\n\n"
            f"Clean and PGD-5 (step 2/255, random start; the paper's attack) on n = {first['n']} test images "
            f"(at most ± {half_width(first['n']):.1f} points), same checkpoints:\n\n" + "\n".join(lines))


def selections(students: dict[str, list[dict]]) -> str:
    """The epoch each student's selection kept, per seed, with Eq. 9's P(random) in it where a map is used."""
    from .methods import METHODS

    def one(s: dict, uses_map: bool) -> str:
        return str(s["selected"]["epoch"]) + (f" ({s['selected']['p_random']:.2f})" if uses_map else "")
    rows = [f"{label}: " + ", ".join(one(s, METHODS.get(ss[0]["method"]).needs_saliency) for s in ss)
            for label, ss in students.items()]
    return ("Selected epoch per seed (from 0; in brackets, for students trained with a map, the mean P(random) of "
            "Eq. 9 in that epoch — the share of elements the map did not drive): " + "; ".join(rows) + ".")


def plan(out: Path, args, steps: Steps) -> tuple[list[Step], Callable[[], str]]:
    """Every step of the protocol, in order, and the final table (once every student is done)."""
    base = TrainConfig(**BUDGETS[args.budget], seed=args.seed, device=args.device)
    test = steps.path("base", "test")
    base = replace(base, train=str(steps.path("base")), val=str(test))
    todo = [Step(f"beton {split}", (), steps.path("base", split).is_file, partial(steps.beton, "base", split))
            for split in ("train", "test")]
    for name, (method, checkpoint) in TEACHERS.items():
        folder = out / "teachers" / name
        cfg = replace(base, method=method, out=str(folder), select="robust" if checkpoint == RunFiles.BEST else "last")
        todo.append(Step(f"teacher {name}", ("beton train", "beton test"), RunFiles(folder).finished,
                         partial(steps.train, folder, cfg.validate())))
    for name, maps in MAPS.items():
        needs = tuple(f"teacher {t}" for t in maps.values() if t in TEACHERS)
        todo.append(Step(f"beton {name}", needs, steps.path(name).is_file,
                         partial(steps.beton, name, "train", maps)))
    todo.append(Step("grids", tuple(f"teacher {t}" for t in TEACHERS),
                     lambda: all((out / f"grid_{t}.png").is_file() for t in TEACHERS),
                     partial(grids, out, test, args.device)))
    students, trained = student_steps(out, args, base, steps)
    todo += trained
    todo.append(Step("timing", tuple(s.name for s in trained), partial(timing_done, out, students),
                     partial(time_students, out, students)))

    def final() -> str:
        summaries = {label: [selected(Path(c.out)) for c in cs] for label, cs in students.items()}
        tests = {label: [full_test(Path(c.out), c, FULL_TEST[args.budget]) for c in cs] for label, cs in students.items()}
        from .comparison import frontier

        timing = json.loads((out / "timing.json").read_text())
        res = results(summaries, tests, timing)
        atomic_write_text(out / "results.json", json.dumps(res, indent=1))
        shared = (f"Teachers and their maps are shared by every seed (trained with seed {args.seed}); each student is "
                  f"trained and graded once per seed ({args.seeds}).\n\n" if args.seeds > 1 else "")
        text = (shared + table(summaries, tests) + "\n\n" + costs(timing) +
                "\n\nThe paper's claims on this data:\n\n" + claims(res, CLAIMS))
        frontier(summaries, out / "frontier.png", max(base.eval_eps),
                 f"cost vs robustness — {base.model} (width {base.width}), {args.dataset}, budget {args.budget}",
                 cost={label: t["epoch_seconds"] for label, t in timing.items()})
        atomic_write_text(out / "table.md", f"# {args.dataset}, budget {args.budget}\n\n{text}\n\n"
                          f"Command: `{steps.record['command']}`\n")
        return text

    return todo, final


def student_steps(out: Path, args, base: TrainConfig, steps: Steps) -> tuple[dict[str, list[TrainConfig]], list[Step]]:
    """Per label, one config per seed (teachers are shared), and the step that trains and grades each."""
    students: dict[str, list[TrainConfig]] = {}
    todo = []
    for label, (method, beton, extra) in STUDENTS.items():
        train = steps.path("base" if beton == "train" else beton)
        for seed in range(args.seed, args.seed + args.seeds):
            folder = out / "students" / slug(label) / (f"seed{seed}" if args.seeds > 1 else "")
            cfg = replace(base, method=method, train=str(train), out=str(folder), seed=seed, **extra).validate()
            students.setdefault(label, []).append(cfg)
            todo.append(Step(f"student {label}" + (f" seed {seed}" if args.seeds > 1 else ""),
                             (f"beton {beton}", "beton test"), partial(student_done, folder),
                             partial(student, steps, folder, cfg, FULL_TEST[args.budget])))
    return students, todo


def costs(timing: dict) -> str:
    """The timed epochs as one sentence, each relative to the first student's (standard training)."""
    first, t = next(iter(timing.items()))
    each = "; ".join(f"{label} {v['epoch_seconds']:.0f} s ({v['epoch_seconds'] / t['epoch_seconds']:.2f}×)"
                     for label, v in timing.items())
    return (f"Cost: one training epoch ({t['steps']} steps) of each student, timed again one student after another "
            f"in one process ({t['threads']} thread{'s' if t['threads'] > 1 else ''}), after every student was "
            f"done (the train-s column was taken beside other processes, so it does not compare across rows): "
            f"{each} (× {first}'s).")


def selected(run: Path) -> dict:
    """A run's summary, its selected epoch with Eq. 9's mean P(random) in that epoch: how much of the
    selected model's training the map (rather than random signs) drove."""
    from .runs import metrics

    summary = RunFiles(run).read("summary")
    epoch = summary["selected"]["epoch"]
    p = next(m["p_random"] for m in metrics(run) if m["epoch"] == epoch)
    summary["selected"] = {**summary["selected"], "p_random": p}
    return summary


def time_students(out: Path, students: dict[str, list[TrainConfig]]) -> None:
    """OUT/timing.json: per student (its first seed's settings), the seconds of one training epoch
    (epoch 0: loader, Eq. 9 or the attack, forward, backward, step; no holdout evaluation), timed in
    this process one student after another, so that the costs compare. Each label is recorded as it
    is done (a killed timing resumes); the scratch run folder is removed."""
    import shutil

    from .trainer import setup, train_epoch

    path, scratch = out / "timing.json", out / "timing_run"
    timed = json.loads(path.read_text()) if path.is_file() else {}
    for label, cfgs in students.items():
        if label in timed:
            continue
        run = setup(replace(cfgs[0], out=str(scratch), overwrite=True), progress=True)
        line = train_epoch(run, 0)
        timed[label] = {"epoch_seconds": line["epoch_seconds"], "steps": len(run.batches),
                        "threads": torch.get_num_threads(), "pid": os.getpid()}
        atomic_write_text(path, json.dumps(timed, indent=1))
        shutil.rmtree(scratch)


def timing_done(out: Path, students: dict) -> bool:
    path = out / "timing.json"
    return path.is_file() and set(students) <= set(json.loads(path.read_text()))


def student_done(folder: Path) -> bool:
    return RunFiles(folder).finished() and RunFiles(folder / "full_test").report.is_file()


def student(steps: Steps, folder: Path, cfg: TrainConfig, limit: int) -> None:
    if RunFiles(folder).finished() and not RunFiles(folder).best.is_file():
        cfg = replace(cfg, overwrite=True)  # trained, not yet graded, and its checkpoint not kept: again
    steps.train(folder, cfg)
    full_test(folder, cfg, limit)


def reproduce(args) -> str:
    if args.seeds < 1:
        raise InputError(f"--seeds must be >= 1, got {args.seeds}")
    if args.threads < 0:
        raise InputError(f"--threads must be >= 0, got {args.threads}")
    pick_device(args.device)
    out = args.out
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    if args.status and not out.is_dir():
        raise InputError(f"{out}: no reproduction there yet")
    if not args.status:
        open_writer(args.dataset, "test", root=args.root)  # the layout is there, before anything is made
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = Steps(out, args)
    plan_, final = plan(out, args, steps)
    if args.status:
        return status(out, plan_)
    run_plan(out, plan_)
    return final()


def grids(out: Path, test_beton: Path, device: str) -> None:
    """Saliency grid of each teacher on the first test images (like the paper's Fig. 3)."""
    from .reader import BetonReader
    from .runs import load_checkpoint
    from .saliency import grid

    reader, idx = BetonReader(test_beton), np.arange(6)
    for name in TEACHERS:
        path = out / f"grid_{name}.png"
        if not path.is_file():
            method, checkpoint = TEACHERS[name]
            model = load_checkpoint(out / "teachers" / name / checkpoint, torch.device("cpu"))["model"]
            grid(model, reader.read("image", idx), reader.read("label", idx), ["gbp", "gradcam_pp_box", "grad_sign"],
                 path, f"teacher {name} ({method})")


def parser() -> ArgumentParser:

    ap = ArgumentParser(prog="python -m fastsat.reproduce", description=__doc__.split("\n\n")[0],
                        epilog="budgets: " + "; ".join(f"{k}: {v['model']} width {v['width']}, {v['epochs']} epochs"
                                                       for k, v in BUDGETS.items()))
    ap.add_argument("--dataset", default="fashion-mnist", help="a dataset layout with a weak map (fashion-mnist, ...)")
    ap.add_argument("--root", type=Path, help="the dataset's files (default: the layout's own default)")
    ap.add_argument("--out", type=Path, default=Path("runs/reproduce"), help="folder of everything it makes")
    ap.add_argument("--budget", choices=list(BUDGETS), default="quick", help="quick (smoke run) or full")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--seed", type=int, default=0, help="seed of the teachers and of the first seed of students")
    ap.add_argument("--seeds", type=int, default=1,
                    help="students trained and graded per seed (--seed, --seed + 1, ...; teachers and maps shared); "
                         "claims are decided on seed-paired differences from two seeds on")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads of this process (0: torch's default). Several processes may run the "
                         "same command on one --out at once: each step is done by one of them")
    ap.add_argument("--status", action="store_true",
                    help="print which steps are done, running (held by a live process), ready and waiting, "
                         "and run nothing")
    return ap


def main(argv=None) -> int:
    return run_cli(lambda: reproduce(parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
