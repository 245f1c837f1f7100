"""Checks for user options, shared by every configuration dataclass (``PrepareConfig``, ``ModelConfig``,
``TrainConfig``): each calls :func:`check_options` when it is built, so a bad value (wrong type, out of
range, unknown choice) is an ``InputError`` naming the option as the user typed it, before any data is read.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

from pipeline.core.errors import InputError


@dataclass(frozen=True)
class Bound:
    """The range a numeric option must lie in, and how to say it in an error message."""

    text: str
    holds: Callable[[float], bool]


def at_least(low: float) -> Bound:
    return Bound(f">= {low}", lambda v: v >= low)


def above(low: float) -> Bound:
    return Bound(f"> {low}", lambda v: v > low)


def between(low: float, high: float, *, high_open: bool = False) -> Bound:
    """``low <= v <= high``, or ``low <= v < high`` with ``high_open``."""
    if high_open:
        return Bound(f"in [{low}, {high})", lambda v: low <= v < high)
    return Bound(f"in [{low}, {high}]", lambda v: low <= v <= high)


def option_error(name: str, need: str, value) -> InputError:
    """``invalid epochs (--epochs): must be an integer >= 1, got 0``: the option as the CLI spells it
    (a flag, or ``--set name=VALUE`` for the fields without one), what it must be, what it was."""
    return InputError(f"invalid {name} (--{name.replace('_', '-')} / --set {name}=...): must be {need}, "
                      f"got {value!r}")


def _kind(annotation: str) -> tuple[str, bool]:
    """``"float | None"`` -> ``("float", True)`` (annotations are strings under ``from __future__``)."""
    parts = {p.strip() for p in str(annotation).split("|")}
    return (parts - {"None"}).pop(), "None" in parts


def _coerce(kind: str, value):
    """The value as ``kind`` (an int is fine for a float), or None when it is not one."""
    if isinstance(value, bool):
        return value if kind == "bool" else None
    if kind == "int":
        return int(value) if isinstance(value, numbers.Integral) else None
    if kind == "float":
        return float(value) if isinstance(value, numbers.Real) and math.isfinite(value) else None
    if kind == "str":
        return value if isinstance(value, str) else None
    return None


_KIND_TEXT = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}


def check_options(config, bounds: dict[str, Bound], choices: dict[str, Sequence[str]] | None = None) -> None:
    """Check every field of the dataclass ``config`` against its annotated type (``int``, ``float``,
    ``bool``, ``str``, optionally ``| None``), its ``bounds`` and its ``choices``; raise the first
    problem as an :func:`option_error`. Ints given for float fields are stored as floats (works on
    frozen dataclasses too)."""
    choices = choices or {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        kind, optional = _kind(f.type)
        if value is None and optional:
            continue
        bound, allowed = bounds.get(f.name), choices.get(f.name)
        need = (f"one of {', '.join(allowed)}" if allowed else _KIND_TEXT[kind]) \
            + (f" {bound.text}" if bound else "") + (" or null" if optional else "")
        got = _coerce(kind, value)
        if got is None or (bound is not None and not bound.holds(got)) or (allowed and got not in allowed):
            raise option_error(f.name, need, value)
        if type(got) is not type(value):
            object.__setattr__(config, f.name, got)
