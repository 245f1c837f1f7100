"""Scores you can trust: temperature scaling, expected calibration error, reliability bins.

A network trained with BCE is usually *overconfident*: among reviews it scores 0.95, fewer than 95% are
positive. **Temperature scaling** (Guo et al., "On Calibration of Modern Neural Networks", 2017) fixes this
with one number fitted after training: the score becomes ``sigmoid(logit / T)``, with ``T > 0`` chosen to
minimise the negative log-likelihood (the BCE) of the validation labels. ``T > 1`` softens overconfident
scores, ``T < 1`` sharpens timid ones. Dividing by a positive number never changes a logit's sign, so the
label at 0.5, the accuracy and any ranking of reviews stay exactly as they were.

The fit is a 1-D problem. The NLL is convex in ``1/T`` (a sum of softplus terms of ``z / T``), hence
unimodal in ``log T``, so a golden-section search over ``log T`` in ``[T_MIN, T_MAX]`` finds its minimum
deterministically, without gradients or random starts. The result is never worse than ``T = 1``.

**Expected calibration error** (ECE), the standard definition with 15 equal-width bins: each prediction's
*confidence* is the probability of the label it predicts, ``max(p, 1 - p)``; predictions are grouped by
confidence into bins ``(k/15, (k+1)/15]``, and ECE is the row-weighted mean gap between each bin's
accuracy and its mean confidence. 0 is perfect; 0.05 means scores are 5 points off on average.

    >>> T = fit_temperature(val_logits, val_labels)
    >>> expected_calibration_error(calibrated_probs(val_logits, T), val_labels)

Plain NumPy (float64), no torch: the loop passes the validation logits in.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.core.errors import InputError

ECE_BINS = 15          # the standard number of equal-width confidence bins
T_MIN, T_MAX = 0.1, 10.0   # a temperature outside this range means a broken model or a degenerate (e.g.
                           # perfectly separated, tiny) validation set: the search stops at the bound
_GOLDEN = (math.sqrt(5) - 1) / 2
_SEARCH_STEPS = 80     # each step shrinks the log-T bracket by 0.618: 80 steps reach float64 resolution


def _checked(logits, labels, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(values float64, labels as 0/1 float64), or an ``InputError`` saying what is wrong with them."""
    values, y = np.asarray(logits, np.float64).ravel(), np.asarray(labels, np.float64).ravel()
    if values.size == 0:
        raise InputError(f"calibration needs at least one labelled row, got no {what}")
    if values.shape != y.shape:
        raise InputError(f"calibration got {values.size} {what} but {y.size} labels; they must pair up")
    if not np.isfinite(values).all():
        raise InputError(f"calibration got {int((~np.isfinite(values)).sum())} non-finite {what} "
                         f"(NaN or inf): the model's output is broken")
    if not np.isin(y, (0.0, 1.0)).all():
        raise InputError(f"calibration labels must be 0 or 1, got {sorted(set(y.tolist()) - {0.0, 1.0})[:5]}")
    return values, y


def nll(logits, labels, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (BCE) of ``labels`` under ``sigmoid(logits / temperature)``, computed
    stably as ``softplus(s) - y * s`` with ``s = logit / T``."""
    z, y = _checked(logits, labels, "logits")
    s = z / temperature
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def fit_temperature(logits, labels, low: float = T_MIN, high: float = T_MAX) -> float:
    """The ``T`` in ``[low, high]`` that minimises :func:`nll` of ``labels`` under ``sigmoid(logits / T)``.

    Golden-section search over ``log T`` (deterministic: the same inputs give the same ``T``, bit for bit),
    then a check against ``T = 1``: the answer never fits the validation rows worse than no scaling."""
    z, y = _checked(logits, labels, "logits")
    if not (0 < low < 1 < high):
        raise InputError(f"temperature search range must satisfy 0 < low < 1 < high, got [{low}, {high}]")
    a, b = math.log(low), math.log(high)
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = nll(z, y, math.exp(c)), nll(z, y, math.exp(d))
    for _ in range(_SEARCH_STEPS):
        if fc <= fd:      # the minimum is in [a, d]
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = nll(z, y, math.exp(c))
        else:             # the minimum is in [c, b]
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = nll(z, y, math.exp(d))
    best = math.exp((a + b) / 2)
    return best if nll(z, y, best) <= nll(z, y, 1.0) else 1.0


def calibrated_probs(logits, temperature: float = 1.0) -> np.ndarray:
    """P(positive) = ``sigmoid(logit / temperature)``, float64, computed without overflow."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise InputError(f"temperature must be a finite number > 0, got {temperature!r}")
    s = np.asarray(logits, np.float64) / temperature
    return np.exp(-np.logaddexp(0.0, -s))


def reliability_bins(probs, labels, bins: int = ECE_BINS) -> dict:
    """Per confidence bin ``(k/bins, (k+1)/bins]`` (the first includes 0): its bounds, row count, mean
    confidence and accuracy (``None`` where a bin is empty). Confidence is ``max(p, 1 - p)``, the
    probability of the predicted label (p >= 0.5 predicts positive, as the scorer labels)."""
    p, y = _checked(probs, labels, "probabilities")
    if ((p < 0) | (p > 1)).any():
        raise InputError("reliability bins need probabilities within [0, 1]")
    if bins < 1:
        raise InputError(f"reliability bins: bins must be >= 1, got {bins}")
    predicted = p >= 0.5
    confidence = np.where(predicted, p, 1.0 - p)
    correct = (predicted == (y == 1.0)).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=confidence, minlength=bins)
    hit_sum = np.bincount(which, weights=correct, minlength=bins)

    def mean(total):
        return [float(t / n) if n else None for t, n in zip(total, count)]

    edges = np.linspace(0.0, 1.0, bins + 1)
    return {"lower": edges[:-1].tolist(), "upper": edges[1:].tolist(), "count": count.tolist(),
            "confidence": mean(conf_sum), "accuracy": mean(hit_sum)}


def ece_from_bins(table: dict) -> float:
    """ECE from :func:`reliability_bins`: sum over bins of (rows / all rows) x |accuracy - confidence|."""
    n = sum(table["count"])
    return float(sum(c / n * abs(acc - conf) for c, acc, conf in
                     zip(table["count"], table["accuracy"], table["confidence"]) if c))


def expected_calibration_error(probs, labels, bins: int = ECE_BINS) -> float:
    """The standard ECE of P(positive) scores ``probs`` against 0/1 ``labels`` (15 equal-width bins)."""
    return ece_from_bins(reliability_bins(probs, labels, bins))


def cross_fitted_ece(logits, labels, folds: int = 2) -> float:
    """ECE after temperature scaling where each row's ``T`` was fitted on the *other* rows (rows dealt to
    ``folds`` folds in turn): an honest estimate, since fitting and measuring on the same rows flatters."""
    z, y = _checked(logits, labels, "logits")
    fold = np.arange(z.size) % folds
    probs = np.empty_like(z)
    for k in range(folds):
        held, rest = fold == k, fold != k
        t = fit_temperature(z[rest], y[rest]) if rest.any() else 1.0
        probs[held] = calibrated_probs(z[held], t)
    return expected_calibration_error(probs, y)


def calibration_report(logits, labels) -> dict:
    """Everything the loop records about calibration on one split, from its logits and 0/1 labels:
    ``temperature``, ECE before/after (and cross-fitted), NLL before/after, and the reliability bins of
    both (for the diagram)."""
    z, y = _checked(logits, labels, "logits")
    t = fit_temperature(z, y)
    before, after = reliability_bins(calibrated_probs(z), y), reliability_bins(calibrated_probs(z, t), y)
    return {"temperature": t, "ece_before": ece_from_bins(before), "ece_after": ece_from_bins(after),
            "ece_after_crossfit": cross_fitted_ece(z, y), "nll_before": nll(z, y), "nll_after": nll(z, y, t),
            "rows": int(z.size), "bins": {"before": before, "after": after}}


# ------------------------------------------------------------------- temperature by text length
#: the length bands (tokens, inclusive upper edges) a version may fit its own temperature for; longer texts use T
LENGTH_BANDS = (10, 40, 128)
MIN_BAND_ROWS = 200           # a band with fewer labelled rows takes the next longer band's temperature


def band_temperature(lengths, bands, temperature: float) -> np.ndarray:
    """Per text, the temperature of the first band (``[(max_tokens, T), ...]``, ascending) its token count fits,
    else ``temperature`` (whole reviews). Element by element: a text's T depends on its own length only."""
    lengths = np.asarray(lengths)
    t = np.full(lengths.shape, float(temperature), np.float64)
    for longest, band_t in sorted(bands, reverse=True):      # shortest band last: it wins where bands overlap
        t[lengths <= longest] = band_t
    return t


def fit_band_temperatures(logits, labels, lengths, temperature: float, edges=LENGTH_BANDS,
                          min_rows: int = MIN_BAND_ROWS) -> list[tuple[int, float]]:
    """``[(max_tokens, T), ...]`` ascending: for each band of ``edges`` (texts of ``(previous edge, edge]``
    tokens), the :func:`fit_temperature` of its rows; a band with fewer than ``min_rows`` rows takes the next
    longer band's T (the longest falls back to ``temperature``), so a thin band never gets a T fitted on noise."""
    z, y = _checked(logits, labels, "logits")
    lengths = np.asarray(lengths)
    fitted, longer_t = [], float(temperature)
    lows = (0, *edges[:-1])
    for low, high in reversed(list(zip(lows, edges))):
        rows = (lengths > low) & (lengths <= high)
        t = fit_temperature(z[rows], y[rows]) if rows.sum() >= min_rows else longer_t
        fitted.append((int(high), float(t)))
        longer_t = t
    return sorted(fitted)


def band_report(probs, labels, lengths, edges=LENGTH_BANDS) -> list[dict]:
    """Accuracy and ECE of scored texts per length band (``edges`` and one band beyond the last), for the model
    card: ``[{"band": "1-10", "n": ..., "accuracy": ..., "ece": ...}, ...]`` (a band without rows is left out)."""
    p, y = np.asarray(probs, np.float64), np.asarray(labels)
    lengths = np.asarray(lengths)
    out = []
    for low, high in zip((0, *edges), (*edges, None)):
        rows = (lengths > low) & (lengths <= high if high is not None else True) & np.isfinite(p)
        if rows.any():
            out.append({"band": f"{low + 1}-{high}" if high is not None else f"{low + 1}+", "n": int(rows.sum()),
                        "accuracy": float(np.mean((p[rows] >= 0.5) == (y[rows] == 1))),
                        "ece": expected_calibration_error(p[rows], y[rows])})
    return out


def banded_probs(logits, lengths, bands, temperature: float) -> np.ndarray:
    """``sigmoid(logit / T)`` with each text's T by its length (:func:`band_temperature`), float64."""
    s = np.asarray(logits, np.float64) / band_temperature(lengths, bands, temperature)
    return np.exp(-np.logaddexp(0.0, -s))
