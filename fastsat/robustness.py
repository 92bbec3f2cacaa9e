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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .attacks import (PGD, AutoAttack, SaliencyAttack, SampleSeeds, StoredMapAttack, TradesAttack, UniformNoise,
                      aa_package)
from .config import eps_key
from .data import to_unit
from .errors import InputError
from .kernels import bits as bitlayout
from .kernels.spec import derive_seed
from .reader import BetonReader
from .subsets import per_class, stratified

PAPER_STEPS = [5, 20, 40]
CHECK = {"steps": [5, 20, 40], "converged_points": 2.0, "large_eps": 64, "large_steps": 100,
         "large_max_acc": 2.0, "square_queries": 1000}  # the masking checks' settings, stated in reports
EVAL_BATCH = 256


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


def correct_under(model, data: EvalData, attack=None, seed: int = 0, only: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N,) bool: which samples the model gets right, under ``attack`` when given. With ``only``
    ((N,) bool), just those samples are attacked; the others count as wrong. Each sample's random
    draws come from its own stream (``seed`` and its index in the beton), so its outcome does not
    depend on the samples that share its batch (AutoAttack's own draws excepted)."""
    model.eval()
    picked = torch.arange(len(data.y)) if only is None else only.cpu().nonzero().flatten()
    out = torch.zeros(len(data.y), dtype=torch.bool)
    for start in range(0, len(picked), EVAL_BATCH):
        idx = picked[start:start + EVAL_BATCH]
        x, y = data.pixels(idx).contiguous(memory_format=torch.channels_last), data.y[idx]
        if attack is not None:
            kwargs = {"generator": SampleSeeds(derive_seed(seed, int(i)) for i in data.indices[idx.numpy()])}
            if isinstance(attack, StoredMapAttack):
                kwargs["signs"] = bitlayout.signs_torch(data.bits[idx], tuple(data.x.shape[1:]),
                                                        data.granularity).permute(0, 3, 1, 2)
            x = attack(model, x, y, **kwargs)
        with torch.no_grad():
            out[idx] = (model(x).argmax(1) == y).cpu()
    return out


@dataclass
class Stage:
    """Attacks at one ε that run on the same samples: in a cascade, the samples that every earlier
    stage at that ε left correct (rows that count toward the worst case); otherwise all of them."""
    eps: float
    rows: list  # (name, attack)
    counted: bool  # its ε is one of the worst case's


def stages(cfg, data: EvalData, n_classes: int, aa_version: str) -> list[Stage]:
    """The protocol in the order it runs: per ε, the white-box attacks (cheapest first, PGD's step
    counts together), the black-box masking check (Square, largest ε), then the black-box rows —
    AutoAttack among the white-box ones unless its list holds Square."""
    step = cfg.eval_step_size / 255
    paper, e_max = cfg.eval_protocol == "paper", max(cfg.eval_eps)
    checks = cfg.eval_protocol == "default" and cfg.eval_checks
    aa = AutoAttack(version=aa_version).components() if aa_version != "none" else ()
    out = []
    for e in sorted(cfg.eval_eps):
        checked_here = CHECK["steps"] if checks and e == e_max else []  # the step-count checks' PGD
        steps = PAPER_STEPS if paper else sorted({*cfg.eval_steps, *checked_here})
        auto = [("autoattack", AutoAttack(e / 255, aa_version, n_classes, cfg.eval_aa_steps, cfg.eval_aa_queries,
                                          cfg.seed, cfg.eval_aa_impl))] if aa else []
        white = [[("saliency", SaliencyAttack(e / 255))], [(f"pgd{k}", PGD(e / 255, step, k)) for k in steps]]
        white += [[("trades", TradesAttack(e / 255, step, 5))]] if paper else []
        white += [auto] if auto and "square" not in aa else []
        black = [[("square", AutoAttack(e / 255, "square", queries=CHECK["square_queries"], seed=cfg.seed,
                                        impl=cfg.eval_aa_impl))]] if checks and e == e_max else []
        black += [[("noise", UniformNoise(e / 255))]] if e in cfg.eval_noise else []
        black += [[("stored_map", StoredMapAttack(e / 255))]] if data.bits is not None and not paper else []
        black += [auto] if auto and "square" in aa else []
        out += [Stage(e, rows, True) for rows in white + black]
    out += [Stage(e, [("noise", UniformNoise(e / 255))], False) for e in cfg.eval_noise if e not in cfg.eval_eps]
    return out


def aa_version(cfg, stochastic: bool) -> str:
    """The AutoAttack version that runs: ``rand`` (EOT) for a stochastic model, else the configured one."""
    if cfg.eval_protocol == "paper" or cfg.eval_aa == "none":
        return "none"
    return "rand" if stochastic else cfg.eval_aa


def settings(cfg, version: str) -> dict:
    """What every number in the report was measured with."""
    s = {"protocol": cfg.eval_protocol, "seed": cfg.seed, "eps_units": "1/255, L-inf, pixels in [0, 1]",
         "pgd": {"steps": PAPER_STEPS if cfg.eval_protocol == "paper" else cfg.eval_steps,
                 "step_size": cfg.eval_step_size, "random_start": True, "restarts": 1, "iterate": "last"},
         "saliency": "white-box x - eps*sign(grad_x logit_y), one step", "noise": "U(-eps, eps) per element"}
    if cfg.eval_protocol == "paper":
        s["trades"] = {"steps": 5, "step_size": cfg.eval_step_size}
    elif version != "none":
        attacks = AutoAttack(version=version, impl=cfg.eval_aa_impl).components()
        s["autoattack"] = {"version": version, "attacks": list(attacks), "steps": cfg.eval_aa_steps,
                           "implementation": aa_package(cfg.eval_aa_impl),
                           **({"square_queries": cfg.eval_aa_queries} if "square" in attacks else {})}
        if version != cfg.eval_aa:
            s["autoattack"]["switched_from"] = cfg.eval_aa
    if cfg.eval_protocol == "default" and cfg.eval_checks:
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
    return bool((a.argmax(1) != b.argmax(1)).any() or change.max() > STOCHASTIC_TOL)


STOCHASTIC_TOL = 1e-4  # relative change of the logits between two passes (AutoAttack's own check)


def _pct(correct: torch.Tensor) -> float:
    return 100.0 * correct.double().mean().item() if len(correct) else 0.0


def robustness(model, data: EvalData, cfg, n_classes: int, progress: bool = True) -> dict:
    """Every attack of the protocol at every ε, the masking checks (default protocol) and the
    per-sample worst case over all of them; accuracies in %.

    Default protocol, ``eval_cascade`` (default): at each ε an attack runs only on the samples every
    earlier one left correct — a sample already broken stays broken, so the per-sample worst case is
    the one of every attack on every sample, and each row is the accuracy under it and the rows run
    before it (``ran_on``: how many samples it attacked). Without the cascade, and under the paper's
    protocol, every attack runs on every sample. ``robust_indices``: per ε, the beton indices of the
    samples that every attack left correct."""
    from tqdm import tqdm

    clean = correct_under(model, data)
    stochastic = is_stochastic(model, data)
    version = aa_version(cfg, stochastic)
    cascade = cfg.eval_cascade and cfg.eval_protocol != "paper"
    plan = stages(cfg, data, n_classes, version)
    standing = {eps_key(e): clean.clone() for e in cfg.eval_eps}  # per ε: correct under every counted row so far
    rows: dict[str, dict[str, torch.Tensor]] = {name: {} for name in row_order(plan)}
    ran_on: dict[str, dict[str, int]] = {name: {} for name in rows}
    seconds: dict[str, dict[str, float]] = {}  # where grading time goes: per row and ε, per check
    bar = tqdm(total=sum(len(st.rows) for st in plan), desc="robustness", disable=not progress, leave=False)
    for st in plan:
        key = eps_key(st.eps)
        only = standing[key].clone() if cascade and st.counted else None
        for name, attack in st.rows:
            rows[name][key] = timed(seconds, name, key, lambda: correct_under(
                model, data, attack, seed=derive_seed(cfg.seed, "eval", name, key), only=only))
            ran_on[name][key] = len(data.y) if only is None else int(only.sum())
            bar.update()
        for name, _ in st.rows if st.counted else ():
            standing[key] &= rows[name][key]
    bar.close()
    checked = cfg.eval_protocol == "default" and cfg.eval_checks
    masking = masking_checks(model, data, cfg, rows, clean, standing, version, seconds, cascade) if checked else None
    attacks = {name: {e: _pct(c) for e, c in by_eps.items()} for name, by_eps in rows.items()}
    attacks["worst_case"] = {e: _pct(standing[e]) for e in sorted(standing, key=float)}
    robust = {e: data.indices[standing[e].numpy()].tolist() for e in attacks["worst_case"]}
    report = {"n": len(data.y), "per_class": data.per_class, "data": data.source,
              "settings": settings(cfg, version) | {"cascade": cascade}, "clean": _pct(clean), "attacks": attacks,
              "ran_on": ran_on, "robust_indices": robust, "stochastic": stochastic, "masked": False, "seconds": seconds}
    if len(data.y) < data.source["size"]:
        report["indices"] = data.indices.tolist()
    if masking is not None:
        masking["checks"].insert(0, monotone_in_eps(attacks, masking.pop("tolerance")))
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
    import time

    t0 = time.perf_counter()
    out = work()
    seconds.setdefault(name, {})[key] = time.perf_counter() - t0
    return out


def white_box_rows(rows, aa_attacks: tuple) -> list[str]:
    """Rows of gradient attacks only: PGD, TRADES, the saliency attack, and AutoAttack unless its
    list holds the black-box Square (which the black-box check must not compare with itself)."""
    return [n for n in rows if n.startswith("pgd") or n in ("trades", "saliency")
            or (n == "autoattack" and "square" not in aa_attacks)]


def masking_checks(model, data: EvalData, cfg, rows: dict, clean, standing: dict, version: str, seconds: dict,
                   cascade: bool) -> dict:
    """Pass/fail flags that gradient masking would trip (Athalye et al. 2018; Carlini et al. 2019),
    from the rows at the largest ε (PGD-5/20/40 on one set of samples, Square on the samples every
    white-box attack left correct) and PGD-100 at ε = 64/255 (in a cascade, on the samples nothing
    broke at the largest ε: those are broken at 64/255 too). ``monotone_in_eps`` is added by the
    caller once every row is in."""
    n = len(data.y)
    tol = max(100.0 / max(n, 1), 0.5)  # one sample, or half a point
    e_max = max(cfg.eval_eps)
    key = eps_key(e_max)
    large = CHECK["large_eps"] / 255
    large_pgd = PGD(large, 2.5 * large / CHECK["large_steps"], CHECK["large_steps"])
    large_acc = _pct(timed(seconds, "pgd_large (check)", f"{CHECK['large_eps']}", lambda: correct_under(
        model, data, large_pgd, seed=derive_seed(cfg.seed, "eval", "pgd_large"), only=standing[key] if cascade else None)))
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
    atomic_write_text(out / "robustness.json", json.dumps(report, indent=1))
    md = table(report)
    atomic_write_text(out / "robustness.md", f"# {title}\n\n{md}\n")
    plot(report, out / "robustness.png", title)
    return md


def verdict(model, x: torch.Tensor, y: torch.Tensor, eps=(2 / 255, 4 / 255, 8 / 255), *, aa: str = "standard",
            aa_impl: str = "pyautoattack", aa_steps: int = 100, aa_queries: int = 5000, pgd_steps=(20,),
            step_size: float = 2 / 255, noise=(8 / 255,), checks: bool = True, cascade: bool = True,
            seed: int = 0, progress: bool = False) -> dict:
    """The default protocol's report on any PyTorch classifier: ``model`` maps (N, C, H, W) pixels in
    [0, 1] to (N, classes) logits; ``x`` such pixels, ``y`` (N,) labels; ε, steps and noise in
    fractions of 1 (as torchattacks and AutoAttack take them). Returns the report ``evaluate``
    writes: every attack's accuracy (%), the per-sample worst case, the masking checks and
    ``masked`` / ``stochastic``."""
    from .config import TrainConfig

    x, y, n_classes = _checked_inputs(model, x, y)
    if any(not 0 < e <= 1 for e in (*eps, *noise, step_size)):
        raise InputError(f"ε, noise and step size are fractions of 1 in (0, 1], got eps {list(eps)}, "
                         f"noise {list(noise)}, step {step_size}")
    cfg = TrainConfig(eval_eps=[e * 255 for e in eps], eval_noise=[e * 255 for e in noise],
                      eval_step_size=step_size * 255, eval_steps=list(pgd_steps), eval_aa=aa, eval_aa_impl=aa_impl,
                      eval_aa_steps=aa_steps, eval_aa_queries=aa_queries, eval_checks=checks, eval_cascade=cascade,
                      seed=seed).validate()
    data = EvalData(x, y, None, None, np.arange(len(y)), per_class(y.cpu().numpy(), np.arange(len(y))),
                    {"beton": None, "dataset": "tensors", "split": "given", "size": len(y)})
    return robustness(model, data, cfg, n_classes, progress=progress)


def _checked_inputs(model, x, y) -> tuple[torch.Tensor, torch.Tensor, int]:
    """x (N, C, H, W) float in [0, 1], y (N,) integer labels, and the model's class count."""
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (torch.is_tensor(x) and x.dim() == 4 and x.is_floating_point()):
        raise InputError(f"x must be a (N, C, H, W) float tensor of pixels in [0, 1], got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if not len(x) or x.min() < 0 or x.max() > 1:
        raise InputError("x must hold pixels in [0, 1] (normalisation belongs inside the model)")
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
    return x.float(), y.long().to(x.device), out.shape[1]
