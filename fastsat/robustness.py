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
    and in PGD steps, PGD-20 ≈ PGD-40, PGD-100 at ε = 64/255 ≈ 0, black-box Square no better than
    the white-box attacks; their attacks at the largest ε are rows of the report too;
  * ``worst_case``: per sample, wrong under any attack that ran at that ε (the checks' included);
    a failed check marks the whole report ``masked`` (its numbers are upper bounds at best).
Paper protocol (``--eval-protocol paper``): PGD-5/20/40, uniform noise, the TRADES attack and the
white-box saliency attack, as the paper's tables. Samples: all of the beton, or a seeded,
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

from .attacks import PGD, AutoAttack, SaliencyAttack, StoredMapAttack, TradesAttack, UniformNoise, aa_package
from .errors import InputError
from .kernels import bits as bitlayout
from .kernels.spec import derive_seed
from .methods import to_unit
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

    def pixels(self, sl: slice) -> torch.Tensor:
        """(n, C, H, W) float in [0, 1] of samples ``sl``."""
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


def correct_under(model, data: EvalData, attack=None, seed: int = 0) -> torch.Tensor:
    """(N,) bool: which samples the model gets right, under ``attack`` when given."""
    model.eval()
    out = []
    for b, start in enumerate(range(0, len(data.y), EVAL_BATCH)):
        sl = slice(start, start + EVAL_BATCH)
        x, y = data.pixels(sl).contiguous(memory_format=torch.channels_last), data.y[sl]
        if attack is not None:
            kwargs = {"generator": torch.Generator(device=x.device).manual_seed(derive_seed(seed, b))}
            if isinstance(attack, StoredMapAttack):
                kwargs["signs"] = bitlayout.signs_torch(data.bits[sl], tuple(data.x.shape[1:]),
                                                        data.granularity).permute(0, 3, 1, 2)
            x = attack(model, x, y, **kwargs)
        with torch.no_grad():
            out.append(model(x).argmax(1) == y)
    return torch.cat(out).cpu()


def jobs(cfg, data: EvalData, n_classes: int, aa_version: str) -> list[tuple[str, float, object]]:
    """(row, ε in 1/255, attack) of the protocol."""
    step = cfg.eval_step_size / 255
    steps = PAPER_STEPS if cfg.eval_protocol == "paper" else cfg.eval_steps
    out = [(f"pgd{k}", e, PGD(e / 255, step, k)) for k in steps for e in cfg.eval_eps]
    if cfg.eval_protocol == "paper":
        out += [("trades", e, TradesAttack(e / 255, step, 5)) for e in cfg.eval_eps]
    elif aa_version != "none":
        out += [("autoattack", e, AutoAttack(e / 255, aa_version, n_classes, cfg.eval_aa_steps, cfg.eval_aa_queries,
                                             cfg.seed, cfg.eval_aa_impl)) for e in cfg.eval_eps]
    out += [("saliency", e, SaliencyAttack(e / 255)) for e in cfg.eval_eps]
    out += [("noise", e, UniformNoise(e / 255)) for e in cfg.eval_noise]
    if data.bits is not None and cfg.eval_protocol != "paper":
        out += [("stored_map", e, StoredMapAttack(e / 255)) for e in cfg.eval_eps]
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
    per-sample worst case over all of them; accuracies in %."""
    from tqdm import tqdm

    clean = correct_under(model, data)
    stochastic = is_stochastic(model, data)
    version = aa_version(cfg, stochastic)
    rows: dict[str, dict[str, torch.Tensor]] = {}
    seconds: dict[str, dict[str, float]] = {}  # where grading time goes: per row and ε, per check
    for name, eps, attack in tqdm(jobs(cfg, data, n_classes, version), desc="robustness", disable=not progress,
                                  leave=False):
        rows.setdefault(name, {})[f"{eps:g}"] = timed(seconds, name, f"{eps:g}", lambda: correct_under(
            model, data, attack, seed=derive_seed(cfg.seed, "eval", name, f"{eps:g}")))
    checked = cfg.eval_protocol == "default" and cfg.eval_checks
    masking = masking_checks(model, data, cfg, rows, version, seconds) if checked else None
    worst = {f"{e:g}": clean for e in cfg.eval_eps}  # at the attacks' ε (noise alone elsewhere says little)
    for by_eps in rows.values():
        for e, c in by_eps.items():
            if e in worst:
                worst[e] = worst[e] & c
    attacks = {name: {e: _pct(c) for e, c in by_eps.items()} for name, by_eps in rows.items()}
    attacks["worst_case"] = {e: _pct(worst[e]) for e in sorted(worst, key=float)}
    report = {"n": len(data.y), "per_class": data.per_class, "data": data.source, "settings": settings(cfg, version),
              "clean": _pct(clean), "attacks": attacks, "stochastic": stochastic, "masked": False,
              "seconds": seconds}
    if len(data.y) < data.source["size"]:
        report["indices"] = data.indices.tolist()
    if masking is not None:
        masking["checks"].insert(0, monotone_in_eps(attacks, masking.pop("tolerance")))
        masking["passed"] = all(c["passed"] for c in masking["checks"])
        report["masking"] = masking
        report["masked"] = not masking["passed"]
        report["failed_checks"] = [c["name"] for c in masking["checks"] if not c["passed"]]
    return report


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


def masking_checks(model, data: EvalData, cfg, rows: dict, version: str, seconds: dict) -> dict:
    """Pass/fail flags that gradient masking would trip (Athalye et al. 2018; Carlini et al. 2019).
    The checks' attacks at the largest ε are added to ``rows`` (so the worst case counts them);
    ``monotone_in_eps`` is added by the caller once every row is in."""
    tol = max(100.0 / max(len(data.y), 1), 0.5)  # one sample, or half a point
    e_max = max(cfg.eval_eps)
    key = f"{e_max:g}"
    step = cfg.eval_step_size / 255
    for k in CHECK["steps"]:
        if key not in rows.get(f"pgd{k}", {}):
            rows.setdefault(f"pgd{k}", {})[key] = timed(seconds, f"pgd{k}", key, lambda: correct_under(
                model, data, PGD(e_max / 255, step, k), seed=derive_seed(cfg.seed, "eval", f"pgd{k}", key)))
    square_attack = AutoAttack(e_max / 255, "square", queries=CHECK["square_queries"], seed=cfg.seed,
                               impl=cfg.eval_aa_impl)
    rows["square"] = {key: timed(seconds, "square", key, lambda: correct_under(model, data, square_attack))}
    large = CHECK["large_eps"] / 255
    large_pgd = PGD(large, 2.5 * large / CHECK["large_steps"], CHECK["large_steps"])
    large_acc = _pct(timed(seconds, "pgd_large (check)", f"{CHECK['large_eps']}", lambda: correct_under(
        model, data, large_pgd, seed=derive_seed(cfg.seed, "eval", "pgd_large"))))
    by_steps = {k: _pct(rows[f"pgd{k}"][key]) for k in CHECK["steps"]}
    square = _pct(rows["square"][key])
    aa = AutoAttack(version=version).components() if version != "none" else ()
    white_rows = white_box_rows(rows, aa)
    white = min(_pct(rows[n][key]) for n in white_rows if key in rows[n])
    checks = [
        flag("monotone_in_steps", all(by_steps[a] <= by_steps[b] + tol for a, b in zip(CHECK["steps"][1:], CHECK["steps"])),
             f"PGD accuracy at ε={key}/255 by steps: " + ", ".join(f"{k}: {v:.1f}" for k, v in by_steps.items()),
             {"eps": e_max, "by_steps": by_steps, "tolerance": tol}),
        flag("pgd_converged", by_steps[20] - by_steps[40] <= max(CHECK["converged_points"], tol),
             f"PGD-20 {by_steps[20]:.1f} vs PGD-40 {by_steps[40]:.1f} at ε={key}/255 (tolerance "
             f"{max(CHECK['converged_points'], tol):.1f} points)", {"pgd20": by_steps[20], "pgd40": by_steps[40]}),
        flag("large_eps_breaks", large_acc <= max(CHECK["large_max_acc"], tol),
             f"PGD-{CHECK['large_steps']} at ε={CHECK['large_eps']}/255: {large_acc:.1f}% (expected ≈ 0)",
             {"accuracy": large_acc}),
        flag("black_box_not_better", square >= white - tol,
             f"Square ({CHECK['square_queries']} queries) {square:.1f}% vs best white-box attack {white:.1f}% "
             f"({', '.join(white_rows)}) at ε={key}/255", {"square": square, "white_box": white, "tolerance": tol}),
    ]
    return {"checks": checks, "tolerance": tol}


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
        cells = [f"{by_eps[f'{e:g}']:.1f}" if f"{e:g}" in by_eps else "" for e in eps]
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
            step_size: float = 2 / 255, noise=(8 / 255,), checks: bool = True, seed: int = 0,
            progress: bool = False) -> dict:
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
                      eval_aa_steps=aa_steps, eval_aa_queries=aa_queries, eval_checks=checks, seed=seed).validate()
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
