"""Options of fastsat's settings dataclasses: each field's help, unit, valid range, role and
whether it is ε-like (in 1/255), the checks and parsers every flag and config key goes through, and
the one conversion of ε-like values to fractions of 1. Imports nothing heavy."""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import InputError


@dataclass(frozen=True)
class Rule:
    text: str  # shown in errors: "lr must be > 0"
    ok: Callable[[object], bool]


def above(lo):
    return Rule(f"> {lo:g}", lambda v: v > lo)


def at_least(lo):
    return Rule(f">= {lo:g}", lambda v: v >= lo)


def between(lo, hi, lo_open=False, hi_open=False):
    text = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return Rule(text, lambda v: (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi))


ROLES = ("run", "eval", "free")  # what a field affects: the training run, its evaluation, or no number at all


def opt(default, help: str, *, rule: Optional[Rule] = None, choices: Optional[Callable[[], list]] = None,
        role: str = "run", eps_like: bool = False, evaluate: Optional[bool] = None):
    """A config field: default, one-line help with its unit, valid range (lists: of each item),
    choices, its role (see ``ROLES``), whether it is ε-like (in ``UNITS``; "8/255" accepted), and
    whether ``python -m fastsat.evaluate`` takes it as a flag (default: the eval role's fields; the
    run's saved config supplies every other)."""
    assert role in ROLES, role
    kw = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(**kw, metadata={"help": help, "rule": rule, "choices": choices, "role": role, "eps_like": eps_like,
                                 "evaluate": role == "eval" if evaluate is None else evaluate})


UNITS = "1/255"  # of every ε-like flag, config key and saved config: 8 means 8/255 (the literature's unit)
EPS_MIN = 0.25  # an ε-like value below this is almost surely a fraction of 1 (the unit before 1/255)


def eps_key(eps: float) -> str:
    """The report key of an ε in 1/255: its number ("4", "0.5"; JSON object keys are strings)."""
    return f"{eps:g}"


EPS_RULE = Rule(f"in [{EPS_MIN:g}, 255] (in 1/255: 8 means 8/255)", lambda v: EPS_MIN <= v <= 255)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_value(f: dataclasses.Field, value) -> None:
    """Type, range and choices of one field's value; an InputError naming the flag."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    kind = type(default)
    ok_type = (isinstance(value, bool) if kind is bool else
               isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
               isinstance(value, int) and not isinstance(value, bool) if kind is int else
               isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                               for v in value) if kind is list else
               isinstance(value, kind))
    if not ok_type:
        want = "a list of numbers" if kind is list else kind.__name__
        raise InputError(f"{flag(f.name)}: expected {want}, got {value!r}")
    rule, choices = f.metadata.get("rule"), f.metadata.get("choices")
    if kind is list and not value:
        raise InputError(f"{flag(f.name)}: needs at least one value")
    for v in value if kind is list else [value]:
        if isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"{flag(f.name)} must be a finite number, got {v!r}")
        if isinstance(v, int) and not isinstance(v, bool) and not -2 ** 63 <= v < 2 ** 63:
            raise InputError(f"{flag(f.name)} must fit in 64 bits, got {v}")
        if rule is not None and not rule.ok(v):
            hint = (f" — ε-like values are in 1/255, no longer fractions of 1: {v:g} of 1 is {v * 255:g} (or write "
                    f"{v * 255:g}/255)" if f.metadata.get("eps_like") and 0 < v < EPS_MIN else "")
            raise InputError(f"{flag(f.name)} must be {rule.text}, got {v!r}{hint}")
    if choices is not None and value not in choices():
        raise InputError(f"{flag(f.name)}: unknown {value!r}; expected one of {', '.join(choices())}")


def parse_list(text: str) -> list:
    """'1,2,3.5' → [1, 2, 3.5]; '2/255,8/255' → [2.0, 8.0] (argparse type: a bad item is a one-line error)."""
    try:
        return [parse_eps(v) if "/" in v else float(v) if any(c in v for c in ".eE") else int(v)
                for v in str(text).replace(" ", "").split(",") if v]
    except (ValueError, argparse.ArgumentTypeError):
        raise ValueError(f"not a comma-separated list of numbers: {text!r}") from None


def parse_eps(text) -> float:
    """An ε-like value in 1/255: '8' → 8.0, and a written fraction '8/255' → 8.0 ('1/32' → 7.97)."""
    num, sep, den = str(text).strip().partition("/")
    try:
        value = float(num) / float(den) * 255 if sep else float(num)
    except (ValueError, ZeroDivisionError):
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"not an ε in 1/255 (such as 8 or 8/255): {text!r}")
    return value


def to_fraction(value: float) -> float:
    """An ε-like value in 1/255 as a fraction of 1, as attacks and kernels take it (the one conversion)."""
    return value / 255


def to_units(fraction: float) -> float:
    """A fraction of 1 (the Python API's ε) in 1/255, the unit of flags, configs and reports."""
    return fraction * 255
