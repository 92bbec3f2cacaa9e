"""Robustness verdicts: strong attacks, a per-sample worst case, and gradient-masking checks.

Used at the end of every run and by ``python -m fastsat.evaluate``. Default protocol (``--eval-protocol default``), all L∞ in pixel space [0, 1], eval mode:
  * PGD-k (random start, step ``eval_step_size``/255, last iterate) for k in ``eval_steps`` (20);
  * AutoAttack (``eval_aa``: standard = APGD-CE, APGD-T, FAB-T, Square with the original's settings,
    from the reference implementation ``pyautoattack`` unless ``eval_aa_impl`` says torchattacks);
    a model whose two forward passes of one batch disagree is stochastic: AutoAttack then runs its
    ``rand`` version (EOT over 20 draws) and the report says so;
  * the paper's saliency attack, white-box: x − ε·sign(∇ₓ Φ^y(x)) on the evaluated model;
  * uniform noise; the beton's stored map as a transfer attack (``stored_map``) where it has one;
  * gradient-masking checks, each a pass/fail flag with its numbers: accuracy non-increasing in ε
    and in PGD steps, PGD-20 ≈ PGD-40, PGD-100 at ε = 64/255 ≈ 0, black-box Square breaking (almost)
    none of the samples the white-box attacks left correct; their attacks at the largest ε are rows
    of the report too;
  * ``worst_case``: per sample, wrong under any attack that ran at that ε (the checks' included);
    a failed check marks the whole report ``masked`` (its numbers are upper bounds at best);
  * a cascade (``eval_cascade``, default): at each ε the attacks run cheapest first, white-box
    before black-box, each on the samples every earlier one left correct; the worst case is the
    same, the rows count the rows above them, ``ran_on`` says how many samples each attacked.
Paper protocol (``--eval-protocol paper``): PGD-5/20/40, uniform noise, the TRADES attack and the
white-box saliency attack, as the paper's tables, every attack on every sample. Samples: all of the beton, or a seeded,
class-stratified sample (``--eval-limit``) whose indices the report records.
Writes ``robustness.json``, ``robustness.md`` and ``robustness.png`` (accuracy vs ε per attack).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .attacks import (AA_IMPLS, PGD, AutoAttack, SaliencyAttack, SampleSeeds, StoredMapAttack, TradesAttack,
                      UniformNoise, aa_package, require_impl)
from .options import EPS_RULE, at_least, check_value, eps_key, opt, to_fraction, to_units
from .batch import to_unit
from .distributed import ranks, summed_over_ranks, waited
from .errors import InputError
from .kernels import bits as bitlayout
from .kernels.spec import derive_seed
from .reader import BetonReader
from .runfiles import RunFiles
from .subsets import per_class, stratified

PAPER_STEPS = [5, 20, 40]
CHECK = {"steps": [5, 20, 40], "converged_points": 2.0, "large_eps": 64, "large_steps": 100,
         "large_max_acc": 2.0, "square_queries": 1000}  # the masking checks' settings, stated in reports
EVAL_BATCH = 256


@dataclass
class EvalSettings:
    """Every setting of a verdict: the ``eval_*`` flags (ε-like ones in 1/255) and the seed its random
    draws derive from. ``TrainConfig`` extends it (a run is graded by its own settings); the Python
    API and ``evaluate`` build it without any training code."""
    seed: int = opt(0, "model init, loader order, holdout split, every random draw (the evaluation's too)", rule=at_least(0),
                    evaluate=True)
    eval_protocol: str = opt("default", "default: PGD-20 + AutoAttack + white-box saliency + worst case + "
                                        "masking checks; paper: the paper's PGD-5/20/40, noise, TRADES, saliency",
                             choices=lambda: ["default", "paper"], role="eval")
    eval_eps: list = opt([1, 2, 3, 4, 8], "attack ε list, in 1/255", rule=EPS_RULE, role="eval", eps_like=True)
    eval_steps: list = opt([20], "PGD steps list (the paper protocol uses 5,20,40)", rule=at_least(1), role="eval")
    eval_noise: list = opt([8, 16, 32], "uniform-noise ε list, in 1/255", rule=EPS_RULE, role="eval", eps_like=True)
    eval_step_size: float = opt(2.0, "PGD / TRADES attack step, in 1/255", rule=EPS_RULE, role="eval", eps_like=True)
    eval_aa: str = opt("standard", "AutoAttack version (standard, rand), a list of its attacks (apgd-ce, "
                                   "apgd-dlr, apgd-t, fab-t, square), or none", role="eval")
    eval_aa_impl: str = opt("pyautoattack", "AutoAttack implementation: pyautoattack (the reference, packaged "
                                             "fra31/auto-attack) or torchattacks (its components, run in sequence)",
                            choices=lambda: list(AA_IMPLS), role="eval")
    eval_aa_steps: int = opt(100, "APGD / FAB iterations of AutoAttack (its original: 100; torchattacks' "
                                  "AutoAttack class: 10)", rule=at_least(1), role="eval")
    eval_aa_queries: int = opt(5000, "Square queries of AutoAttack", rule=at_least(1), role="eval")
    eval_checks: bool = opt(True, "run the gradient-masking checks (default protocol; adds PGD-5/40, "
                                  "PGD-100 at ε = 64/255 and a Square attack)", role="eval")
    eval_cascade: bool = opt(True, "default protocol: at each ε, attack only the samples every earlier attack "
                                   "left correct (the same per-sample worst case, at a fraction of the cost; each "
                                   "row then counts the rows above it); off: every attack on every sample",
                             role="eval")
    eval_limit: int = opt(0, "evaluate on a seeded, class-stratified sample of N test images (0: all)",
                          rule=at_least(0), role="eval")

    def fraction(self, name: str) -> float:
        """An ε-like field as a fraction of 1, as attacks and kernels take it."""
        assert next(f for f in dataclasses.fields(self) if f.name == name).metadata["eps_like"], name
        return to_fraction(getattr(self, name))

    def validate(self):
        for f in dataclasses.fields(self):
            check_value(f, getattr(self, f.name))
        if self.eval_aa != "none":
            try:
                AutoAttack(version=self.eval_aa).components()
            except ValueError as e:
                raise InputError(f"--eval-aa: {e}") from None
            require_impl(self.eval_aa_impl)
        return self

    def evaluation(self) -> "EvalSettings":
        """The evaluation settings alone (of a ``TrainConfig``: its own, without the run's)."""
        return EvalSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EvalSettings)})


@dataclass
class EvalData:
    """The evaluated samples, in memory: x (N, H, W, C) uint8 as a beton stores them (or (N, C, H, W)
    float in [0, 1] from the Python API), y (N,), the stored map's signs."""
    x: torch.Tensor
    y: torch.Tensor
    bits: Optional[torch.Tensor]  # (N, nbytes) uint8, or None
    granularity: Optional[str]
    indices: np.ndarray  # into the beton
    per_class: dict
    source: dict  # beton, dataset, split, size

    def pixels(self, sl) -> torch.Tensor:
        """(n, C, H, W) float in [0, 1] of samples ``sl`` (a slice or an index tensor)."""
        x = self.x[sl]
        return to_unit(x) if x.dtype == torch.uint8 else x


def sample_indices(labels: np.ndarray, limit: int, seed: int, among: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices to evaluate: all of ``among`` (default: every sample), or ``limit`` of them, seeded
    and class-stratified."""
    among = np.arange(len(labels)) if among is None else np.asarray(among)
    return among[stratified(labels[among], limit, seed, "eval sample")] if limit else among


def eval_data(info, idx: np.ndarray, device) -> EvalData:
    """Samples ``idx`` of the beton, in memory on ``device``."""
    reader = BetonReader(info.path)
    has_map = "sal" in info.saliency
    return EvalData(torch.from_numpy(reader.read("image", idx)).to(device),
                    torch.from_numpy(reader.read("label", idx)).to(device),
                    torch.from_numpy(reader.read("sal", idx)).to(device) if has_map else None,
                    info.granularity() if has_map else None, idx, per_class(info.labels, idx),
                    {"beton": str(info.path), "dataset": info.manifest["dataset"],
                     "split": info.manifest["split"], "size": info.num_samples})


SPLIT = (8, 16)  # an attack's samples go in at least 8 batches while each keeps at least 16 samples


def batches(picked: np.ndarray, batch: int = EVAL_BATCH) -> list[np.ndarray]:
    """The positions an attack runs on, in near-equal batches of at most ``batch``, and in at least
    ``SPLIT[0]`` of them where each keeps ``SPLIT[1]`` samples (200 → 8 of 25; 4,000 → 16 of 250):
    formed from the positions alone, so the same whatever the number of ranks, and enough of them
    for up to 8 ranks to share even a few hundred samples."""
    n = len(picked)
    parts = max(-(-n // batch), min(SPLIT[0], n // SPLIT[1]), 1)
    return np.array_split(picked, parts) if n else []


def gathered(local: torch.Tensor, device) -> torch.Tensor:
    """Per-sample outcomes that each rank filled for its own batches (zeros elsewhere), summed over
    ranks: every rank then holds every sample's outcome."""
    if ranks()[1] == 1:
        return local
    return summed_over_ranks(local.to(device)).cpu()  # NCCL reduces device tensors, gloo host ones


def correct_under(model, data: EvalData, attack=None, seed: int = 0, only: Optional[torch.Tensor] = None,
                  batch: int = EVAL_BATCH) -> torch.Tensor:
    """(N,) bool: which samples the model gets right, under ``attack`` when given. With ``only``
    ((N,) bool), just those samples are attacked; the others count as wrong. Under a process group
    each rank attacks every world-th batch and the outcomes are gathered, so every rank returns all
    N. Each sample's draws come from its own stream (``seed`` and its index in the beton); an
    AutoAttack batch's from a seed of its samples' indices, so outcomes do not depend on how many
    ranks graded."""
    model.eval()
    rank, world = ranks()
    picked = np.arange(len(data.y)) if only is None else only.cpu().nonzero().flatten().numpy()
    out = torch.zeros(len(data.y), dtype=torch.uint8)
    for j, idx in enumerate(batches(picked, batch)):
        if j % world == rank:
            out[idx] = _correct_batch(model, data, attack, seed, torch.from_numpy(idx)).to(torch.uint8)
    return gathered(out, data.y.device).bool()


def _correct_batch(model, data: EvalData, attack, seed: int, idx: torch.Tensor) -> torch.Tensor:
    x, y = data.pixels(idx).contiguous(memory_format=torch.channels_last), data.y[idx]
    if isinstance(attack, AutoAttack):  # it seeds torch's global stream itself: with the batch's own seed
        attack = replace(attack, seed=derive_seed(seed, "batch", *data.indices[idx.numpy()]))
        with torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
            x = attack(model, x, y)
    elif attack is not None:
        kwargs = {"generator": SampleSeeds(derive_seed(seed, int(i)) for i in data.indices[idx.numpy()])}
        if isinstance(attack, StoredMapAttack):
            kwargs["signs"] = bitlayout.signs_torch(data.bits[idx], tuple(data.x.shape[1:]),
                                                    data.granularity).permute(0, 3, 1, 2)
        x = attack(model, x, y, **kwargs)
    with torch.no_grad():
        return (model(x).argmax(1) == y).cpu()


@dataclass
class Stage:
    """Attacks at one ε that run on the same samples: in a cascade, the samples that every earlier
    stage at that ε left correct (rows that count toward the worst case); otherwise all of them."""
    eps: float
    rows: list  # (name, attack)
    counted: bool  # its ε is one of the worst case's


def stages(settings, data: EvalData, n_classes: int, aa_version: str) -> list[Stage]:
    """The protocol in the order it runs: per ε, the white-box attacks (cheapest first, PGD's step
    counts together), the black-box masking check (Square, largest ε), then the black-box rows —
    AutoAttack among the white-box ones unless its list holds Square."""
    step = settings.fraction("eval_step_size")
    paper, e_max = settings.eval_protocol == "paper", max(settings.eval_eps)
    checks = settings.eval_protocol == "default" and settings.eval_checks
    aa = AutoAttack(version=aa_version).components() if aa_version != "none" else ()
    out = []
    for e in sorted(settings.eval_eps):
        f = to_fraction(e)
        checked_here = CHECK["steps"] if checks and e == e_max else []  # the step-count checks' PGD
        steps = PAPER_STEPS if paper else sorted({*settings.eval_steps, *checked_here})
        auto = [("autoattack", AutoAttack(f, aa_version, n_classes, settings.eval_aa_steps, settings.eval_aa_queries,
                                          settings.seed, settings.eval_aa_impl))] if aa else []
        white = [[("saliency", SaliencyAttack(f))], [(f"pgd{k}", PGD(f, step, k)) for k in steps]]
        white += [[("trades", TradesAttack(f, step, 5))]] if paper else []
        white += [auto] if auto and "square" not in aa else []
        black = [[("square", AutoAttack(f, "square", queries=CHECK["square_queries"], seed=settings.seed,
                                        impl=settings.eval_aa_impl))]] if checks and e == e_max else []
        black += [[("noise", UniformNoise(f))]] if e in settings.eval_noise else []
        black += [[("stored_map", StoredMapAttack(f))]] if data.bits is not None and not paper else []
        black += [auto] if auto and "square" in aa else []
        out += [Stage(e, rows, True) for rows in white + black]
    out += [Stage(e, [("noise", UniformNoise(to_fraction(e)))], False)
            for e in settings.eval_noise if e not in settings.eval_eps]
    return out


def aa_version(settings, stochastic: bool) -> str:
    """The AutoAttack version that runs: ``rand`` (EOT) for a stochastic model, else the configured one."""
    if settings.eval_protocol == "paper" or settings.eval_aa == "none":
        return "none"
    return "rand" if stochastic else settings.eval_aa


def measured_with(settings, version: str) -> dict:
    """What every number in the report was measured with."""
    s = {"protocol": settings.eval_protocol, "seed": settings.seed, "eps_units": "1/255, L-inf, pixels in [0, 1]",
         "pgd": {"steps": PAPER_STEPS if settings.eval_protocol == "paper" else settings.eval_steps,
                 "step_size": settings.eval_step_size, "random_start": True, "restarts": 1, "iterate": "last"},
         "saliency": "white-box x - eps*sign(grad_x logit_y), one step", "noise": "U(-eps, eps) per element"}
    if settings.eval_protocol == "paper":
        s["trades"] = {"steps": 5, "step_size": settings.eval_step_size}
    elif version != "none":
        attacks = AutoAttack(version=version, impl=settings.eval_aa_impl).components()
        s["autoattack"] = {"version": version, "attacks": list(attacks), "steps": settings.eval_aa_steps,
                           "implementation": aa_package(settings.eval_aa_impl),
                           **({"square_queries": settings.eval_aa_queries} if "square" in attacks else {})}
        if version != settings.eval_aa:
            s["autoattack"]["switched_from"] = settings.eval_aa
    if settings.eval_protocol == "default" and settings.eval_checks:
        s["masking_checks"] = CHECK
    return s


def is_stochastic(model, data: EvalData) -> bool:
    """Two forward passes of the first batch (eval mode) disagree: a randomised model, whose
    gradients only an expectation over its randomness (EOT) attacks fairly."""
    model.eval()
    x = data.pixels(slice(0, EVAL_BATCH)).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        a, b = model(x).float(), model(x).float()
    change = (a - b).norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)
    found = torch.tensor([int((a.argmax(1) != b.argmax(1)).any() or change.max() > STOCHASTIC_TOL)])
    if ranks()[1] > 1:  # rank 0's finding decides for every rank, as one process would
        import torch.distributed as dist

        found = found.to(data.y.device)
        dist.broadcast(found, 0)
    return bool(found.item())


STOCHASTIC_TOL = 1e-4  # relative change of the logits between two passes (AutoAttack's own check)


def _pct(correct: torch.Tensor) -> float:
    return 100.0 * correct.double().mean().item() if len(correct) else 0.0


def grade(model, data: EvalData, settings: EvalSettings, n_classes: int, progress: bool = True,
          batch: int = EVAL_BATCH) -> dict:
    """Every attack of the protocol at every ε, the masking checks (default protocol) and the
    per-sample worst case over all of them; accuracies in %.

    Default protocol, ``eval_cascade`` (default): at each ε an attack runs only on the samples every
    earlier one left correct — a sample already broken stays broken, so the per-sample worst case is
    the one of every attack on every sample, and each row is the accuracy under it and the rows run
    before it (``ran_on``: how many samples it attacked). Without the cascade, and under the paper's
    protocol, every attack runs on every sample. ``robust_indices``: per ε, the beton indices of the
    samples that every attack left correct."""
    from tqdm import tqdm

    start = time.perf_counter(), waited()
    clean = correct_under(model, data, batch=batch)
    stochastic = is_stochastic(model, data)
    version = aa_version(settings, stochastic)
    cascade = settings.eval_cascade and settings.eval_protocol != "paper"
    plan = stages(settings, data, n_classes, version)
    standing = {eps_key(e): clean.clone() for e in settings.eval_eps}  # per ε: correct under every counted row so far
    rows: dict[str, dict[str, torch.Tensor]] = {name: {} for name in row_order(plan)}
    ran_on: dict[str, dict[str, int]] = {name: {} for name in rows}
    seconds: dict[str, dict[str, float]] = {}  # where grading time goes: per row and ε, per check
    bar = tqdm(total=sum(len(st.rows) for st in plan), desc="robustness", disable=not progress or ranks()[0] > 0,
               leave=False)
    for st in plan:
        key = eps_key(st.eps)
        only = standing[key].clone() if cascade and st.counted else None
        for name, attack in st.rows:
            rows[name][key] = timed(seconds, name, key, lambda: correct_under(
                model, data, attack, seed=derive_seed(settings.seed, "eval", name, key), only=only, batch=batch))
            ran_on[name][key] = len(data.y) if only is None else int(only.sum())
            bar.update()
        for name, _ in st.rows if st.counted else ():
            standing[key] &= rows[name][key]
    bar.close()
    checked = settings.eval_protocol == "default" and settings.eval_checks
    masking = masking_checks(model, data, settings, rows, clean, standing, version, seconds, cascade,
                             batch) if checked else None
    attacks = {name: {e: _pct(c) for e, c in by_eps.items()} for name, by_eps in rows.items()}
    attacks["worst_case"] = {e: _pct(standing[e]) for e in sorted(standing, key=float)}
    robust = {e: data.indices[standing[e].numpy()].tolist() for e in attacks["worst_case"]}
    report = {"n": len(data.y), "per_class": data.per_class, "data": data.source,
              "settings": measured_with(settings, version) | {"cascade": cascade, "batch": batch},
              "clean": _pct(clean), "attacks": attacks, "ran_on": ran_on, "robust_indices": robust,
              "stochastic": stochastic, "masked": False, "seconds": seconds, "ranks": ranks()[1],
              "rank_seconds": rank_seconds(*start, data.y.device)}
    if len(data.y) < data.source["size"]:
        report["indices"] = data.indices.tolist()
    return with_masking(report, masking)


def rank_seconds(start: float, waited_at_start: float, device) -> list[dict]:
    """Where each rank's time since ``start`` (``time.perf_counter``; ``waited()`` then) went:
    working on its share, or waiting for the others'."""
    rank, world = ranks()
    wall, waiting = time.perf_counter() - start, waited() - waited_at_start
    mine = torch.zeros(world, 2, dtype=torch.float64)
    mine[rank] = torch.tensor([wall - waiting, waiting])
    every = gathered(mine, device)
    return [{"working": round(w, 3), "waiting": round(v, 3)} for w, v in every.tolist()]


def with_masking(report: dict, masking: Optional[dict]) -> dict:
    """The report with its masking checks (``monotone_in_eps`` added from its rows) and verdict."""
    if masking is not None:
        masking["checks"].insert(0, monotone_in_eps(report["attacks"], masking.pop("tolerance")))
        masking["passed"] = all(c["passed"] for c in masking["checks"])
        report["masking"] = masking
        report["masked"] = not masking["passed"]
        report["failed_checks"] = [c["name"] for c in masking["checks"] if not c["passed"]]
    return report


def row_order(plan: list[Stage]) -> list[str]:
    """Row names in the order they run at the largest ε (which has them all), then the others."""
    e_max = max(st.eps for st in plan if st.counted)
    names = [n for st in plan if st.eps == e_max and st.counted for n, _ in st.rows]
    return list(dict.fromkeys(names + [n for st in plan for n, _ in st.rows]))


def timed(seconds: dict, name: str, key: str, work):
    """``work()``, its wall time recorded in ``seconds[name][key]``."""
    t0 = time.perf_counter()
    out = work()
    seconds.setdefault(name, {})[key] = time.perf_counter() - t0
    return out


def white_box_rows(rows, aa_attacks: tuple) -> list[str]:
    """Rows of gradient attacks only: PGD, TRADES, the saliency attack, and AutoAttack unless its
    list holds the black-box Square (which the black-box check must not compare with itself)."""
    return [n for n in rows if n.startswith("pgd") or n in ("trades", "saliency")
            or (n == "autoattack" and "square" not in aa_attacks)]


def masking_checks(model, data: EvalData, settings, rows: dict, clean, standing: dict, version: str, seconds: dict,
                   cascade: bool, batch: int = EVAL_BATCH) -> dict:
    """Pass/fail flags that gradient masking would trip (Athalye et al. 2018; Carlini et al. 2019),
    from the rows at the largest ε (PGD-5/20/40 on one set of samples, Square on the samples every
    white-box attack left correct) and PGD-100 at ε = 64/255 (in a cascade, on the samples nothing
    broke at the largest ε: those are broken at 64/255 too). ``monotone_in_eps`` is added by the
    caller once every row is in."""
    n = len(data.y)
    tol = max(100.0 / max(n, 1), 0.5)  # one sample, or half a point
    e_max = max(settings.eval_eps)
    key = eps_key(e_max)
    large = to_fraction(CHECK["large_eps"])
    large_pgd = PGD(large, 2.5 * large / CHECK["large_steps"], CHECK["large_steps"])
    large_acc = _pct(timed(seconds, "pgd_large (check)", f"{CHECK['large_eps']}", lambda: correct_under(
        model, data, large_pgd, seed=derive_seed(settings.seed, "eval", "pgd_large"), only=standing[key] if cascade else None, batch=batch)))
    by_steps = {k: _pct(rows[f"pgd{k}"][key]) for k in CHECK["steps"]}
    aa = AutoAttack(version=version).components() if version != "none" else ()
    white_rows = white_box_rows(rows, aa)
    white = clean.clone()
    for name in white_rows:
        white &= rows[name][key]
    broke = _pct(white & ~rows["square"][key])
    checks = [
        *step_flags(by_steps, tol, e_max),
        flag("large_eps_breaks", large_acc <= max(CHECK["large_max_acc"], tol),
             f"PGD-{CHECK['large_steps']} at ε={CHECK['large_eps']}/255: {large_acc:.1f}% (expected ≈ 0)",
             {"accuracy": large_acc}),
        flag("black_box_not_better", broke <= tol,
             f"Square ({CHECK['square_queries']} queries) broke {broke:.1f}% of the samples (of {_pct(white):.1f}%) "
             f"that every white-box attack ({', '.join(white_rows)}) left correct at ε={key}/255",
             {"square_broke": broke, "white_box": _pct(white), "tolerance": tol}),
    ]
    return {"checks": checks, "tolerance": tol}


def step_flags(by_steps: dict, tol: float, eps: float) -> list:
    """PGD accuracy by step count must not rise with more steps (``monotone_in_steps``) nor keep
    falling after 20 (``pgd_converged``). Both allow the same margin, at least
    ``CHECK["converged_points"]``: PGD-20 and PGD-40 start from different random points, and on a
    few hundred samples that alone moves their accuracies apart by a few samples either way."""
    margin = max(CHECK["converged_points"], tol)
    steps, key = CHECK["steps"], eps_key(eps)
    return [
        flag("monotone_in_steps", all(by_steps[a] <= by_steps[b] + margin for a, b in zip(steps[1:], steps)),
             f"PGD accuracy at ε={key}/255 by steps: " + ", ".join(f"{k}: {v:.1f}" for k, v in by_steps.items())
             + f" (tolerance {margin:.1f} points)", {"eps": eps, "by_steps": by_steps, "tolerance": margin}),
        flag("pgd_converged", by_steps[20] - by_steps[40] <= margin,
             f"PGD-20 {by_steps[20]:.1f} vs PGD-40 {by_steps[40]:.1f} at ε={key}/255 (tolerance "
             f"{margin:.1f} points)", {"pgd20": by_steps[20], "pgd40": by_steps[40]}),
    ]


def flag(name: str, passed: bool, detail: str, numbers: dict) -> dict:
    return {"name": name, "passed": bool(passed), "detail": detail, "numbers": numbers}


NOT_OPTIMISED = ("noise", "stored_map")  # rows with no reason to fall monotonically in ε


def monotone_in_eps(attacks: dict, tol: float) -> dict:
    """Every optimising attack's accuracy is non-increasing in ε (within ``tol`` points)."""
    bad = []
    for name, by_eps in attacks.items():
        if name in NOT_OPTIMISED:
            continue
        values = [by_eps[e] for e in sorted(by_eps, key=float)]
        bad += [f"{name} rises {a:.1f} → {b:.1f}" for a, b in zip(values, values[1:]) if b > a + tol]
    return flag("monotone_in_eps", not bad, "; ".join(bad) or "every optimising attack's accuracy falls with ε",
                {"violations": bad, "tolerance": tol})


def table(report: dict) -> str:
    """Markdown: one row per attack, one column per ε (in 1/255), then the settings and flags."""
    attacks = report["attacks"]
    eps = sorted({float(e) for v in attacks.values() for e in v})
    lines = ["| attack | clean | " + " | ".join(f"ε={e:g}/255" for e in eps) + " |",
             "|---|---|" + "---|" * len(eps)]
    for name, by_eps in attacks.items():
        cells = [f"{by_eps[eps_key(e)]:.1f}" if eps_key(e) in by_eps else "" for e in eps]
        label = f"**{name}**" if name == "worst_case" else name
        lines.append(f"| {label} | {report['clean']:.1f} | " + " | ".join(cells) + " |")
    s = report["settings"]
    lines.append("")
    lines.append(f"n = {report['n']} ({report['data']['dataset']}/{report['data']['split']}"
                 f"{', stratified sample' if 'indices' in report else ''}), seed {s['seed']}, protocol {s['protocol']}; "
                 f"PGD steps {s['pgd']['steps']}, step {s['pgd']['step_size']:g}/255, random start"
                 + (f"; AutoAttack {s['autoattack']['version']} by {s['autoattack']['implementation']} "
                    f"({', '.join(s['autoattack']['attacks'])}; {s['autoattack']['steps']} iterations"
                    + (f", Square {s['autoattack']['square_queries']} queries" if "square_queries" in s["autoattack"]
                       else "") + ")" if "autoattack" in s else "") + ".")
    if report.get("ranks", 1) > 1 and "rank_seconds" in report:
        lines.append("")
        lines.append(f"Graded on {report['ranks']} ranks, each on its share of every attack's batches: "
                     + ", ".join(f"rank {r} worked {t['working']:.0f} s and waited {t['waiting']:.0f} s"
                                 for r, t in enumerate(report["rank_seconds"])) + ".")
    if s.get("cascade"):
        lines.append("")
        lines.append("Cascade: at each ε the attacks ran in the order of the rows, each on the samples every row "
                     "above it left correct (how many: `ran_on` in robustness.json; the PGD rows share one set), so "
                     "a row is the accuracy under it and the rows above it, and the worst case is the last.")
    if report.get("stochastic"):
        lines.append("")
        lines.append("The model is **stochastic** (two forward passes of one batch disagree): AutoAttack ran its "
                     "rand version (EOT); every other row is one draw of the model's randomness.")
    if "masking" in report:
        m = report["masking"]
        lines.append("")
        lines.append("Gradient-masking checks: " + ("all passed." if m["passed"] else
                                                    f"**FAILED ({', '.join(report['failed_checks'])}) — MASKED: "
                                                    "the robustness numbers above are not a verdict; the worst case "
                                                    "includes the checks' attacks but may still be inflated.**"))
        lines += [f"- {'✓' if c['passed'] else '✗ **FAILED**'} {c['name']}: {c['detail']}" for c in m["checks"]]
    if report.get("other_data"):
        lines.append("")
        lines.append(f"**Evaluated on other data than the model was trained on** ({report['other_data']}).")
    return "\n".join(lines)


def plot(report: dict, path: Path, title: str) -> None:
    from .plots import save, subplots

    fig, ax = subplots(figsize=(6, 4))
    for name, by_eps in report["attacks"].items():
        xs = sorted(by_eps, key=float)
        ax.plot([float(e) for e in xs], [by_eps[e] for e in xs], marker="o", label=name,
                lw=2.5 if name == "worst_case" else 1.2, color="black" if name == "worst_case" else None)
    ax.axhline(report["clean"], color="grey", ls="--", lw=0.8, label="clean")
    ax.set_xlabel("ε (×1/255)")
    ax.set_ylabel(f"accuracy (%), n = {report['n']}")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    save(fig, path)


def write_reports(report: dict, out: Path, title: str) -> str:
    from .files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    files = RunFiles(out)
    atomic_write_text(files.report, json.dumps(report, indent=1))
    md = table(report)
    atomic_write_text(files.report_md, f"# {title}\n\n{md}\n")
    plot(report, files.report_plot, title)
    return md


def grade_beton(model, info, settings: EvalSettings, device, out: Path, title: str, progress: bool = True,
                extra: Optional[dict] = None) -> tuple[dict, str]:
    """The verdict of ``model`` on the beton ``info`` (all of it, or the seeded, stratified sample of
    ``eval_limit`` images), with ``extra`` keys and ``title``, its reports written to ``out``; the
    report and its markdown table. What a run's final report, ``evaluate`` and ``reproduce`` do."""
    settings = settings.evaluation()
    data = eval_data(info, sample_indices(info.labels, settings.eval_limit, settings.seed), device)
    report = grade(model, data, settings, info.num_classes, progress=progress)
    report.update(extra or {}, title=title)
    return report, write_reports(report, out, title) if ranks()[0] == 0 else table(report)  # one writer


def verdict(model, x: torch.Tensor, y: torch.Tensor, eps=(2 / 255, 4 / 255, 8 / 255), *, aa: str = "standard",
            aa_impl: str = "pyautoattack", aa_steps: int = 100, aa_queries: int = 5000, pgd_steps=(20,),
            step_size: float = 2 / 255, noise=(8 / 255,), checks: bool = True, cascade: bool = True,
            seed: int = 0, progress: bool = False, procs: int = 1, batch_size: int = EVAL_BATCH) -> dict:
    """The default protocol's report on any PyTorch classifier: ``model`` maps (N, C, H, W) pixels in
    [0, 1] to (N, classes) logits; ``x`` such pixels, ``y`` (N,) labels; ε, steps and noise in
    fractions of 1 (as torchattacks and AutoAttack take them). Returns the report ``evaluate``
    writes: every attack's accuracy (%), the per-sample worst case, the masking checks and
    ``masked`` / ``stochastic``. ``procs`` > 1 grades on that many local processes (CPU, one share
    of the threads each; the model must pickle), sample for sample as one process would;
    ``batch_size`` bounds the attacks' batches (their composition is part of AutoAttack's result)."""
    from .distributed import run_ranks

    x, y, n_classes = _checked_inputs(model, x, y)
    if any(not 0 < e <= 1 for e in (*eps, *noise, step_size)):
        raise InputError(f"ε, noise and step size are fractions of 1 in (0, 1], got eps {list(eps)}, "
                         f"noise {list(noise)}, step {step_size}")
    settings = EvalSettings(eval_eps=[to_units(e) for e in eps], eval_noise=[to_units(e) for e in noise],
                            eval_step_size=to_units(step_size), eval_steps=list(pgd_steps), eval_aa=aa,
                            eval_aa_impl=aa_impl, eval_aa_steps=aa_steps, eval_aa_queries=aa_queries, eval_checks=checks,
                            eval_cascade=cascade, seed=seed).validate()
    data = EvalData(x, y, None, None, np.arange(len(y)), per_class(y.cpu().numpy(), np.arange(len(y))),
                    {"beton": None, "dataset": "tensors", "split": "given", "size": len(y)})
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    try:
        report = run_ranks(procs, grade, model, data, settings, n_classes, progress, batch_size)
    finally:
        model.train(was_training)  # handed back as it came
    if was_training:
        report["mode"] = ("graded in eval mode (the model came in train mode and is handed back so); for a model "
                          "whose randomness is part of its defence, grade it with aa='rand'")
    return report


def _checked_inputs(model, x, y) -> tuple[torch.Tensor, torch.Tensor, int]:
    """x (N, C, H, W) float in [0, 1], y (N,) integer labels, and the model's class count."""
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (torch.is_tensor(x) and x.dim() == 4 and x.is_floating_point()):
        raise InputError(f"x must be a (N, C, H, W) float tensor of pixels in [0, 1], got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if not len(x) or not torch.isfinite(x).all():
        raise InputError("x must hold finite pixels (it is empty or holds NaN / Inf)")
    if x.min() < 0 or x.max() > 1:
        raise InputError("x must hold pixels in [0, 1] (normalisation belongs inside the model)")
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes - {torch.float32}:
        raise InputError(f"the model's parameters are {', '.join(sorted(map(str, dtypes)))}: the attacks run in "
                         f"float32 (grade model.float())")
    x = x.float()
    if not (torch.is_tensor(y) and y.shape == (len(x),) and not y.is_floating_point()):
        raise InputError(f"y must be a ({len(x)},) integer tensor of labels")
    was = model.training
    with torch.no_grad():
        out = model.eval()(x[:2])
    model.train(was)
    if not (torch.is_tensor(out) and out.dim() == 2 and out.shape[0] == len(x[:2]) and out.shape[1] >= 2):
        raise InputError(f"the model must return (N, classes) logits, got "
                         f"{tuple(out.shape) if torch.is_tensor(out) else type(out).__name__}")
    if y.min() < 0 or y.max() >= out.shape[1]:
        raise InputError(f"labels must lie in [0, {out.shape[1] - 1}] for a model of {out.shape[1]} classes")
    return x, y.long().to(x.device), out.shape[1]
