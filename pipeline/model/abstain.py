"""Unsure texts: leave the label ``'unknown'`` where the model is unsure, at a stated error rate.

A score near 0.5 is a coin toss: the label it gives is wrong far more often than one at 0.02 or 0.98. With
``--max-error A`` (off by default) a text is labelled only when its score is at least a **margin** ``m`` away
from 0.5 (``|p - 0.5| >= m``); a text closer to 0.5 gets the label ``'unknown'`` and no score, exactly as a
text below the coverage rule (:mod:`pipeline.model.coverage`) does. ``m`` is chosen once, at registration, on
the validation reviews, for each stated error rate ``A`` of :data:`STATED_ERRORS`, and recorded in the
version's ``config.json`` (``"abstain"``); scoring only looks it up, so every path (``score``, its Dask
parts, the SQL functions, ``predict``) applies the same number to the same scores.

**How m is chosen (risk control, not a point estimate).** The candidates are :data:`CANDIDATES` margins fixed
in advance, ``sigmoid(0.1 k) - 0.5`` for ``k = 0..100`` (0, then finer and finer towards p = 0 or 1; the last
keeps scores beyond 0.99995 or 0.00005). For each candidate the validation rows it keeps (``n``) and the
labels it gets wrong among them (``e``) give a one-sided Clopper-Pearson upper bound on its error rate at
confidence ``1 - DELTA / CANDIDATES`` (Bonferroni over the candidates). ``m`` is the smallest candidate whose
bound is at most ``A``: it keeps the most rows among those that pass. Guarantee: if the validation rows are
an i.i.d. sample of the texts to be scored, then with probability at least ``1 - DELTA`` (95%) over that
sample, the error rate among the texts the model labels at this margin is at most ``A`` (for each ``A``;
the union bound holds for every candidate at once, so for whichever one the data picked). No candidate may
pass (too few validation rows, or too weak a model for so small an ``A``): then the record says so
(``margin`` null) and scoring refuses that ``A``.

The test needs no root finding: the bound ``u`` solves ``P(Bin(n, u) <= e) = d``, and that probability falls as
``u`` grows, so ``u <= A`` exactly when ``P(Bin(n, A) <= e) <= d``. The binomial tail is summed in log space
from log-factorials (plain NumPy, float64): the same inputs give the same margins, bit for bit.

Caveats, stated in the model card too: the validation rows also picked the checkpoint and fitted the
temperature, so the guarantee is a little optimistic for this version; it speaks of texts like the
validation reviews (a shift in the data moves the error rate, as drift monitoring watches); it concerns the
label at 0.5 (``--max-error`` cannot be combined with another ``--threshold``).

    >>> rec = fit(val_scores, val_labels)           # -> AbstainRecord; rec.to_dict() goes into config.json
    >>> m = margin_for(config, 0.05, "v0003-...")    # the recorded margin, or an InputError saying what exists
    >>> unsure(scores, m)                           # -> bool mask of the texts to leave 'unknown'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.errors import InputError, IntegrityError

#: the ``config.json`` key a version records its thresholds under
CONFIG_KEY = "abstain"
#: the error rates a version records a margin for (``--max-error`` takes one of them)
STATED_ERRORS = (0.01, 0.02, 0.05, 0.10)
#: 1 - DELTA: how sure the bound is (over the draw of the validation rows)
DELTA = 0.05
METHOD = "clopper-pearson upper bound, bonferroni over the candidate margins"
_LOGIT_STEP, CANDIDATES = 0.1, 101


def rate_key(max_error: float) -> str:
    """How a stated error rate is written as a key of the record: ``0.05 -> "0.05"``, ``0.10 -> "0.1"``."""
    return f"{float(max_error):g}"


def candidate_margins() -> np.ndarray:
    """The :data:`CANDIDATES` margins, fixed in advance: ``sigmoid(0.1 k) - 0.5``, ``k = 0..100`` (ascending)."""
    z = _LOGIT_STEP * np.arange(CANDIDATES, dtype=np.float64)
    return 1.0 / (1.0 + np.exp(-z)) - 0.5


def margin_of(scores) -> np.ndarray:
    """``|p - 0.5|`` per score (NaN stays NaN)."""
    return np.abs(np.asarray(scores, np.float64) - 0.5)


def unsure(scores, margin: float) -> np.ndarray:
    """Bool mask: the scores (not NaN) closer to 0.5 than ``margin``: their texts are labelled ``'unknown'``."""
    m = margin_of(scores)
    with np.errstate(invalid="ignore"):
        return ~np.isnan(m) & ~(m >= margin)


def _log_factorials(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def binom_cdf(e: int, n: int, p: float, log_fact: np.ndarray | None = None) -> float:
    """``P(Bin(n, p) <= e)``, summed in log space (exact enough for a bound: relative error ~1e-12)."""
    if e >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lf = _log_factorials(n) if log_fact is None else log_fact
    k = np.arange(e + 1)
    terms = lf[n] - lf[k] - lf[n - k] + k * math.log(p) + (n - k) * math.log1p(-p)
    top = terms.max()
    return float(min(1.0, math.exp(top) * np.exp(terms - top).sum()))


def upper_bound(e: int, n: int, level: float) -> float:
    """The one-sided Clopper-Pearson upper bound on an error rate after ``e`` errors in ``n`` rows: the ``u``
    with ``P(Bin(n, u) <= e) = level`` (bisection; 1.0 when ``e == n`` or ``n == 0``)."""
    if n == 0 or e >= n:
        return 1.0
    lf = _log_factorials(n)
    lo, hi = e / n, 1.0
    for _ in range(64):
        mid = (lo + hi) / 2
        if binom_cdf(e, n, mid, lf) > level:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class Threshold:
    """The margin recorded for one stated error rate (``margin`` None: no candidate met it)."""
    max_error: float
    margin: float | None
    rows_kept: int            # validation rows labelled at this margin
    coverage: float           # rows_kept / all validation rows used
    val_error: float | None   # the error rate among them (None when none is kept)
    error_bound: float | None  # its upper bound, as tested

    def to_dict(self) -> dict[str, Any]:
        return {"margin": self.margin, "rows_kept": self.rows_kept, "coverage": self.coverage,
                "val_error": self.val_error, "error_bound": self.error_bound}


@dataclass(frozen=True)
class AbstainRecord:
    """What registration records under ``config.json`` ``"abstain"`` (:meth:`to_dict`)."""
    rows: int                 # labelled validation rows the model reads (their scores)
    errors: int               # their wrong labels at 0.5, all rows kept
    thresholds: tuple[Threshold, ...]
    delta: float = DELTA
    candidates: int = CANDIDATES
    method: str = METHOD

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "delta": self.delta, "candidates": self.candidates, "rows": self.rows,
                "errors": self.errors, "max_error": {rate_key(t.max_error): t.to_dict() for t in self.thresholds}}


def _kept_and_errors(scores: np.ndarray, labels: np.ndarray, margins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate margin: the rows it keeps (``|p - 0.5| >= m``) and their wrong labels."""
    wrong = (scores >= 0.5) != (labels == 1)
    order = np.argsort(margin_of(scores), kind="stable")
    sorted_margin = margin_of(scores)[order]
    wrong_after = np.concatenate([np.cumsum(wrong[order][::-1])[::-1], [0]])   # wrong among rows i.. of the order
    first = np.searchsorted(sorted_margin, margins, side="left")
    return len(scores) - first, wrong_after[first]


def fit(scores, labels, rates: tuple[float, ...] = STATED_ERRORS, delta: float = DELTA) -> AbstainRecord:
    """The margin of every stated error rate in ``rates`` (module docstring), from validation ``scores``
    (P(positive), as served) and their 0/1 ``labels``."""
    p, y = np.asarray(scores, np.float64).ravel(), np.asarray(labels).ravel()
    if p.shape != y.shape:
        raise InputError(f"abstain thresholds: {p.size} scores but {y.size} labels; they must pair up")
    if not (np.isfinite(p).all() and ((p >= 0) & (p <= 1)).all()):
        raise InputError("abstain thresholds need scores within 0..1 (no NaN)")
    if not np.isin(y, (0, 1)).all():
        raise InputError("abstain thresholds need labels 0 or 1")
    if not 0.0 < delta < 1.0 or not all(0.0 < a < 1.0 for a in rates):
        raise InputError(f"abstain thresholds: delta and the error rates must be within (0, 1), got {delta}, {rates}")
    margins = candidate_margins()
    kept, wrong = _kept_and_errors(p, y, margins)
    level = delta / len(margins)
    lf = _log_factorials(len(p))
    out = []
    for a in sorted(rates):
        passing = [k for k in range(len(margins)) if kept[k] and binom_cdf(int(wrong[k]), int(kept[k]), a, lf) <= level]
        out.append(_threshold(a, margins, kept, wrong, passing[0] if passing else None, level, len(p)))
    return AbstainRecord(rows=len(p), errors=int(wrong[0]) if len(p) else 0, thresholds=tuple(out), delta=delta)


def _threshold(a: float, margins, kept, wrong, k: int | None, level: float, rows: int) -> Threshold:
    if k is None:
        return Threshold(a, None, 0, 0.0, None, None)
    n, e = int(kept[k]), int(wrong[k])
    return Threshold(a, float(margins[k]), n, n / rows, e / n, upper_bound(e, n, level))


# ------------------------------------------------------------------------------- reading the record back


def _number(value, low: float, high: float) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
            and low <= value <= high)


def _check_entry(key: str, entry, where: str) -> None:
    if not isinstance(entry, dict):
        raise IntegrityError(f"{where}: {CONFIG_KEY}.max_error[{key!r}] must be an object, got {entry!r}")
    margin = entry.get("margin")
    if margin is not None and not _number(margin, 0.0, 0.5):
        raise IntegrityError(f"{where}: {CONFIG_KEY}.max_error[{key!r}].margin must be null or within 0..0.5, "
                             f"got {margin!r}")
    for field in ("coverage", "val_error", "error_bound"):
        value = entry.get(field)
        if not (value is None and field != "coverage") and not _number(value, 0.0, 1.0):
            raise IntegrityError(f"{where}: {CONFIG_KEY}.max_error[{key!r}].{field} must be within 0..1, "
                                 f"got {value!r}")


def read_record(config: dict, where: str = "config.json") -> dict | None:
    """The version's ``"abstain"`` record (checked), or None when it has none. A malformed one is an
    :class:`IntegrityError` naming ``where`` and the field."""
    block = config.get(CONFIG_KEY) if isinstance(config, dict) else None
    if block is None:
        return None
    rates = block.get("max_error") if isinstance(block, dict) else None
    if not isinstance(rates, dict) or not rates:
        raise IntegrityError(f"{where}: {CONFIG_KEY!r} must be an object with a non-empty \"max_error\" object")
    if not _number(block.get("delta"), 0.0, 1.0) or not isinstance(block.get("rows"), int) or block["rows"] < 0:
        raise IntegrityError(f"{where}: {CONFIG_KEY} must record delta within 0..1 and rows >= 0")
    for key, entry in rates.items():
        try:
            ok = 0.0 < float(key) < 1.0 and rate_key(float(key)) == key
        except ValueError:
            ok = False
        if not ok:
            raise IntegrityError(f"{where}: {CONFIG_KEY}.max_error has the key {key!r}, not an error rate like "
                                 f"\"0.05\"")
        _check_entry(key, entry, where)
    return block


def margin_for(config: dict, max_error: float, version: str) -> float:
    """The margin ``version`` recorded for the stated error rate ``max_error``; an :class:`InputError` saying
    which rates it offers when it recorded none for this one, or none at all."""
    if not _number(max_error, 0.0, 1.0) or max_error in (0.0, 1.0):
        raise InputError(f"--max-error must be an error rate within (0, 1), like 0.05; got {max_error!r}")
    block = read_record(config, f"model version {version}: config.json")
    if block is None:
        raise InputError(f"model {version} records no thresholds for --max-error (registered before they existed, "
                         "or without labelled validation rows): score without --max-error, or train a new version")
    rates = block["max_error"]
    usable = [k for k, v in sorted(rates.items(), key=lambda kv: float(kv[0])) if v.get("margin") is not None]
    entry = rates.get(rate_key(max_error))
    if entry is None:
        raise InputError(f"--max-error {max_error:g}: model {version} recorded thresholds for "
                         f"{', '.join(sorted(rates, key=float))} only; usable: {', '.join(usable) or 'none'}")
    if entry.get("margin") is None:
        raise InputError(f"--max-error {max_error:g}: no confidence margin of model {version} kept its validation "
                         f"errors under {max_error:g} with {1 - float(block['delta']):.0%} confidence; usable: "
                         f"{', '.join(usable) or 'none'}")
    return float(entry["margin"])
