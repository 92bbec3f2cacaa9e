"""Statistics of studies: mean ± 95% t-interval over seeds, and claims decided on seed-paired
differences (two one-sided tests per cell, non-inferiority for "≥", Holm over a whole table).

A claim spec is a list of ``(claim, left label, right label, "better" | "not worse")``; the results
it is read from map each label to per-grading accuracies over seeds (``reproduce.results``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np


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


NI_MARGIN = 1.0  # points: "≥" holds when the difference is shown to lie above −1 point (non-inferiority)
ALPHA_FAMILY = 0.05  # family-wise error rate of one claims table (Holm over every test in it)


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2))


def holm(pvalues: list[float], alpha: float = ALPHA_FAMILY) -> list[bool]:
    """Holm's step-down procedure: which hypotheses are rejected at family-wise level ``alpha``."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        rejected[i] = True
    return rejected


@dataclass
class Cell:
    """One claim at one grading and ε: the difference left − right (points), its standard error and
    degrees of freedom (None: one seed, the normal approximation of two accuracies on the test
    sample; else the seed-paired t over the per-seed differences), and the two one-sided tests."""
    d: float
    se: float
    df: Optional[int]
    kind: str
    masked: bool
    sample_margin: float  # 95% half-width of one seed's difference from the test sample alone
    verdict: str = "unresolved"

    def pvalues(self) -> tuple[float, float]:
        """One-sided p of "holds" (d > 0, or d > −margin for ≥) and of its opposite."""
        shift = 0.0 if self.kind == "better" else -NI_MARGIN
        z = (self.d - shift) / max(self.se, 1e-12)
        if self.df is None:
            return _normal_sf(z), _normal_sf(-z)
        from scipy.stats import t

        return float(t.sf(z, self.df)), float(t.sf(-z, self.df))

    def half_width(self) -> float:
        if self.df is None:
            return 1.96 * self.se
        from scipy.stats import t

        return float(t.ppf(0.975, self.df)) * self.se

    def text(self) -> str:
        if self.masked:
            return f"{self.d:+.1f} masked: no verdict"
        spread = f" (±{self.half_width():.1f}" + (f"; sample ±{self.sample_margin:.1f})" if self.df else ")")
        return f"{self.d:+.1f} {self.verdict}" + (spread if self.verdict == "unresolved" or self.df else "")


def _cell(a: dict, b: dict, e: str, kind: str, masked: bool) -> Cell:
    """The cell of accuracies ``a`` (left) and ``b`` (right) at ε ``e``, each a list over seeds."""
    left, right = np.asarray(a["acc"][e], float), np.asarray(b["acc"][e], float)
    pa, pb = left.mean() / 100, right.mean() / 100
    sample = math.hypot(half_width(a["n"], pa), half_width(b["n"], pb)) / 1.96  # s.e. of one seed's difference
    diffs = left - right
    if len(diffs) < 2:
        return Cell(float(diffs[0]), sample, None, kind, masked, 1.96 * sample)
    return Cell(float(diffs.mean()), float(diffs.std(ddof=1) / math.sqrt(len(diffs))), len(diffs) - 1, kind, masked,
                1.96 * sample)


def claim_cells(res: dict, spec: list) -> dict[str, dict[tuple[str, str], Cell]]:
    """Every claim's cells, decided together: Holm over the two one-sided tests of every unmasked cell."""
    table = {}
    for claim, left, right, kind in spec:
        if left not in res or right not in res:
            continue
        masked = res[left]["masked"] or res[right]["masked"]
        table[claim] = {(g, e): _cell(res[left][g], res[right][g], e, kind, masked)
                        for g in ("PGD-5", "worst case") for e in sorted(res[left][g]["acc"], key=float)}
    live = [c for row in table.values() for c in row.values() if not c.masked]
    decided = holm([p for c in live for p in c.pvalues()])
    for c, (yes, no) in zip(live, zip(decided[::2], decided[1::2])):
        c.verdict = "holds" if yes else ("reversed" if c.kind == "better" else "refuted") if no else "unresolved"
    return table


def claims(res: dict, spec: list) -> str:
    """The paper's claims as a table of differences with verdicts, then the reading of each claim."""
    table = claim_cells(res, spec)
    if not table:
        return "No claim can be read: a student it compares is missing."
    cols = list(next(iter(table.values())))
    timed = all("epoch_seconds" in r for r in res.values())
    head = ["claim"] + [f"{g} ε={e}/255" for g, e in cols] + [
        "epoch s (timed alone), left / right" if timed else "train s, left / right"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for claim, left, right, _ in spec:
        if claim in table:
            t_left, t_right = (res[x]["epoch_seconds"] if timed else float(np.mean(res[x]["train_seconds"]))
                               for x in (left, right))
            cost = f"{t_left:.0f} / {t_right:.0f} ({t_left / max(t_right, 1e-9):.2f}×)"
            lines.append("| " + " | ".join([claim] + [table[claim][c].text() for c in cols] + [cost]) + " |")
    n_tests = 2 * sum(not c.masked for row in table.values() for c in row.values())
    seeds = len(next(iter(res.values()))["seeds"])
    how = (f"the seed-paired differences over {seeds} seeds (mean, one-sample t with {seeds - 1} degrees of freedom; "
           f"± the 95% t-interval, and the 95% half-width one seed's test sample alone would give)" if seeds > 1 else
           "one seed: the normal approximation of two independent accuracies on the test sample (± its unadjusted "
           "95% half-width); training variation is not covered")
    note = (f"Differences left − right in accuracy points. Each cell is two one-sided tests from {how}: *holds* — "
            f"for >, the difference is above 0; for ≥, above −{NI_MARGIN:g} point (non-inferiority margin); "
            f"*reversed* / *refuted* — the opposite; *unresolved* — neither. Holm's correction over all {n_tests} "
            f"tests of this table, family-wise α = {ALPHA_FAMILY:g}; a cell of a student that failed a masking check "
            f"gets no verdict. {reach(seeds, n_tests)}")
    return note + "\n\n" + "\n".join(lines) + "\n\n" + reading(table)


def reach(seeds: int, n_tests: int) -> str:
    """What the table can decide at all: the statistic the most significant cell must pass (Holm's
    first step) and the one the last step needs, in standard errors of a difference."""
    if not n_tests:
        return ""
    from scipy.stats import norm, t

    dist, of = (t(seeds - 1), f"one-sided t, {seeds - 1} degrees of freedom") if seeds > 1 else (norm, "one-sided normal")
    first, last = float(dist.isf(ALPHA_FAMILY / n_tests)), float(dist.isf(ALPHA_FAMILY))
    return (f"What it can decide: the strongest cell is decided only if its difference lies {first:.1f} standard "
            f"errors beyond the threshold ({of}, p ≤ α/{n_tests}); the last of Holm's steps needs {last:.1f}.")


def reading(table: dict[str, dict]) -> str:
    """One sentence per claim that says what its cells say, and no more."""
    out = []
    for claim, row in table.items():
        by_word: dict[str, list[str]] = {}
        for (grading, e), c in row.items():
            by_word.setdefault("masked (no verdict)" if c.masked else c.verdict, []).append(f"{grading} {e}/255")
        if len(by_word) == 1:
            out.append(f"- **{claim}**: {next(iter(by_word))} in every cell.")
        else:
            out.append(f"- **{claim}**: " + "; ".join(f"{w} at {', '.join(where)}" for w, where in by_word.items())
                       + ".")
    return "\n".join(out)


def half_width(n: int, p: float = 0.5) -> float:
    """95% half-width, in points, of an accuracy p measured on n images (normal approximation); at the
    default p = 0.5, the largest for any accuracy."""
    return 100 * 1.96 * (p * (1 - p) / max(n, 1)) ** 0.5


def paired(diffs: list[float]) -> dict:
    """The seed-paired difference: mean, standard error, degrees of freedom and 95% t-interval."""
    d = np.asarray(diffs, float)
    se = float(d.std(ddof=1) / math.sqrt(len(d)))
    from scipy.stats import t

    half = float(t.ppf(0.975, len(d) - 1)) * se
    return {"n": len(d), "mean": float(d.mean()), "se": se, "df": len(d) - 1,
            "ci": [float(d.mean()) - half, float(d.mean()) + half]}


def one_sided(p: dict, shift: float = 0.0) -> tuple[float, float]:
    """One-sided paired-t p-values of "the difference is above ``shift``" and of "below ``shift``"."""
    from scipy.stats import t

    z = (p["mean"] - shift) / max(p["se"], 1e-12)
    return float(t.sf(z, p["df"])), float(t.cdf(z, p["df"]))


def two_sided_claims(diffs: dict[str, list[float]], margin: float, alpha: float = ALPHA_FAMILY) -> dict[str, dict]:
    """Each claim "left − right ≠ 0" as two one-sided paired t tests, Holm over all of them at
    family-wise ``alpha``: ``higher``, ``lower`` or ``undecided``. An undecided claim gets a paired
    TOST at ±``margin`` (level ``alpha``): ``equivalent`` when both of its one-sided tests reject."""
    stats = {c: paired(d) for c, d in diffs.items()}
    ps = [p for s in stats.values() for p in one_sided(s)]
    rejected = holm(ps, alpha)
    out = {}
    for i, (c, s) in enumerate(stats.items()):
        up, down = ps[2 * i:2 * i + 2]
        word = "higher" if rejected[2 * i] else "lower" if rejected[2 * i + 1] else "undecided"
        out[c] = {**s, "p_higher": up, "p_lower": down, "decision": word}
        if word == "undecided":
            tost = max(one_sided(s, -margin)[0], one_sided(s, margin)[1])
            out[c]["tost"] = {"margin": margin, "p": tost, "equivalent": tost <= alpha}
    return out


def detectable(sd: float, n: int, tests: int, power: float = 0.8, alpha: float = ALPHA_FAMILY) -> float:
    """The smallest true paired difference a one-sided t test at Holm's first step (α/tests) finds
    with ``power``, for a per-seed SD of the difference ``sd`` over ``n`` seeds."""
    from scipy.stats import t

    return (float(t.isf(alpha / tests, n - 1)) + float(t.ppf(power, n - 1))) * sd / math.sqrt(n)


def equivalence_reach(sd: float, n: int, margin: float, alpha: float = ALPHA_FAMILY) -> float:
    """The largest observed |mean difference| a paired TOST at ±``margin`` still calls equivalent, for a
    per-seed SD ``sd`` over ``n`` seeds (≤ 0: equivalence cannot be shown)."""
    from scipy.stats import t

    return margin - float(t.isf(alpha, n - 1)) * sd / math.sqrt(n)
