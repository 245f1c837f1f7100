"""Plots saved next to the data they describe (matplotlib, Agg backend, no display needed).

A plain module of functions; other stages add their own here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _figure(figsize=(7, 4), dpi=90):
    """A Figure on the Agg canvas, without pyplot (no global state: safe in a worker thread)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (its folder made if missing); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def length_histogram(lengths, path: str | Path, max_len: int | None = None,
                     title: str = "Review length (tokens)") -> Path:
    """Histogram of token counts per review, with the truncation length marked. Returns ``path``."""
    lengths = np.asarray(lengths)
    fig = _figure()
    ax = fig.add_subplot()
    if len(lengths):
        hi = max(int(np.percentile(lengths, 99.5)), max_len or 0, 1)
        counts, edges = np.histogram(np.minimum(lengths, hi), bins=60, range=(0, hi))
        ax.stairs(counts, edges, fill=True, color="#4C72B0")            # one artist, not 60 bars
        if max_len:
            frac = float((lengths > max_len).mean())
            ax.axvline(max_len, color="#C44E52", linestyle="--",
                       label=f"max_len={max_len} ({frac:.1%} truncated)")
            ax.legend()
        p50 = float(np.median(lengths))
        ax.set_title(f"{title}: n={len(lengths):,}, median={p50:.0f}")
    else:
        ax.set_title(f"{title}: no rows")
    ax.set_xlabel("tokens per review (before truncation)")
    ax.set_ylabel("reviews")
    fig.subplots_adjust(left=0.11, right=0.97, top=0.91, bottom=0.13)    # fixed: tight_layout costs a render
    return _save(fig, path)


def plot_training_curve(history: list[dict], path: str | Path, title: str = "Training") -> Path:
    """Loss (train/val) and validation accuracy per epoch, side by side. Returns ``path``.

    (Added by the training stage; ``history`` is ``pipeline.train.loop``'s per-epoch records.)
    """
    fig = _figure(figsize=(9, 3.6))
    ax_loss, ax_acc = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    epochs = [r["epoch"] for r in history]
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train", color="#4C72B0")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation", color="#C44E52")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("BCE loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [r["train_accuracy"] for r in history], "o-", label="train", color="#4C72B0")
    ax_acc.plot(epochs, [r["val_accuracy"] for r in history], "o-", label="validation", color="#C44E52")
    for key, label, color in (("val_accuracy_encoder", "val, encoder half", "#8172B2"),
                              ("val_accuracy_ngram", "val, n-gram half", "#55A868")):
        if history and all(key in r for r in history):      # wide & deep models
            ax_acc.plot(epochs, [r[key] for r in history], ".--", label=label, color=color, alpha=0.8)
    if history:
        best = max(history, key=lambda r: r["val_accuracy"])
        ax_acc.set_title(f"best val acc {best['val_accuracy']:.4f} (epoch {best['epoch']})", fontsize=9)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend()
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.85, bottom=0.15, wspace=0.3)
    return _save(fig, path)


def score_histogram(counts, path: str | Path, threshold: float = 0.5,
                    title: str = "Sentiment scores") -> Path:
    """Bar histogram of P(positive) from per-bin ``counts`` over [0, 1] (e.g. ScoreReport.histogram),
    with the label threshold marked. Returns ``path``."""
    counts = np.asarray(counts, dtype=np.int64)
    edges = np.linspace(0.0, 1.0, len(counts) + 1)
    fig = _figure()
    ax = fig.add_subplot()
    ax.stairs(counts, edges, fill=True, color="#4C72B0")
    ax.axvline(threshold, color="#C44E52", linestyle="--", label=f"threshold {threshold:g}")
    pos = int(counts[edges[:-1] >= threshold].sum()) if len(counts) else 0
    ax.set_title(f"{title}: n={int(counts.sum()):,}, {pos:,} at or above the threshold")
    ax.set_xlabel("sentiment_score (P(positive))")
    ax.set_ylabel("reviews")
    ax.set_xlim(0, 1)
    ax.legend()
    fig.subplots_adjust(left=0.11, right=0.97, top=0.91, bottom=0.13)
    return _save(fig, path)


def plot_reliability(before: dict, after: dict, path: str | Path, temperature: float = 1.0,
                     title: str = "Calibration", bands: dict[str, dict] | None = None) -> Path:
    """Reliability diagram of a binary classifier, before and after temperature scaling. Returns ``path``.

    ``before`` / ``after`` are per-bin tables as :func:`pipeline.model.calibration.reliability_bins` makes them
    (``lower``, ``upper``, ``count``, ``confidence``, ``accuracy``; None in an empty bin). Left: each bin's
    accuracy against its mean confidence (a calibrated model lies on the diagonal; below it is
    overconfident), with the ECE of each in the legend. Right: how many predictions fall in each bin.
    ``bands`` (label -> bins): short held-out texts per length band, each with its own temperature, drawn dashed.
    """
    fig = _figure(figsize=(9, 3.8))
    ax_rel, ax_cnt = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax_rel.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    curves = [(before, "before (T = 1)", "#C44E52"), (after, f"after (T = {temperature:.3g})", "#4C72B0")]
    curves += [(table, f"{name}, own T", color) for (name, table), color
               in zip((bands or {}).items(), ("#55A868", "#8172B2", "#CCB974"))]
    for table, label, color in curves:
        used = [i for i, c in enumerate(table["count"]) if c]
        n = max(sum(table["count"]), 1)
        ece = sum(table["count"][i] / n * abs(table["accuracy"][i] - table["confidence"][i]) for i in used)
        ax_rel.plot([table["confidence"][i] for i in used], [table["accuracy"][i] for i in used],
                    "o-" if "own T" not in label else "s--", color=color, label=f"{label}: ECE {ece:.4f}")
        edges = np.asarray(table["lower"] + table["upper"][-1:])
        ax_cnt.stairs(np.asarray(table["count"]), edges, color=color, label=label, linewidth=1.5)
    lo = min([before["lower"][i] for i, c in enumerate(before["count"]) if c] or [0.0])
    ax_rel.set_xlim(min(lo, 0.5), 1.0)
    ax_rel.set_ylim(min(lo, 0.5) - 0.05, 1.02)
    ax_rel.set_xlabel("confidence (probability of the predicted label)")
    ax_rel.set_ylabel("accuracy")
    ax_rel.legend(fontsize=8, loc="upper left")
    ax_cnt.set_xlim(min(lo, 0.5), 1.0)
    ax_cnt.set_xlabel("confidence")
    ax_cnt.set_ylabel("predictions per bin")
    ax_cnt.legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.14, wspace=0.3)
    return _save(fig, path)


def drift_plot(reference: dict, run: dict, path: str | Path, title: str = "Scoring run vs reference") -> Path:
    """Two panels: the score histogram and the tokens-per-text histogram, each as shares, of the model's
    reference (its validation reviews) and of the run. ``reference``/``run``: profile dicts
    (:class:`pipeline.model.profile.Profile`). Returns ``path``."""
    fig = _figure(figsize=(10, 4))
    for k, (key, label) in enumerate((("score_hist", "score"), ("length_hist", "tokens per text (bin)"))):
        ax = fig.add_subplot(1, 2, k + 1)
        for prof, name, color in ((reference, "reference (validation)", "#4C72B0"), (run, "this run", "#DD8452")):
            counts = np.asarray(prof[key], dtype=float)
            shares = counts / counts.sum() if counts.sum() else counts
            if key == "score_hist":
                edges = np.linspace(0.0, 1.0, len(shares) + 1)
            else:
                edges = np.arange(len(shares) + 1, dtype=float)
            ax.stairs(shares, edges, label=name, color=color, linewidth=2)
        if key == "length_hist":
            lows = prof.get("length_edges") or list(range(len(shares)))
            ax.set_xticks(np.arange(len(lows)) + 0.5, [str(x) for x in lows], rotation=45, fontsize=7)
        ax.set_xlabel(label)
        ax.set_ylabel("share of rows")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def drift_trend_plot(runs: list[tuple], path: str | Path, title: str = "Drift over scoring runs") -> Path:
    """PSI of scores and of lengths per run (oldest first), with the 0.1 / 0.25 levels. ``runs``: rows of
    :func:`pipeline.score.drift.trend`. Returns ``path``."""
    runs = list(reversed(runs))
    fig = _figure()
    ax = fig.add_subplot()
    x = np.arange(len(runs))
    for col, name in ((5, "PSI score"), (6, "PSI tokens per text")):
        ax.plot(x, [r[col] if r[col] is not None else np.nan for r in runs], marker="o", label=name)
    for level, style in ((0.1, ":"), (0.25, "--")):
        ax.axhline(level, color="grey", linestyle=style, linewidth=1)
    ax.set_xticks(x, [str(r[0])[:16] for r in runs], rotation=45, fontsize=7, ha="right")
    ax.set_ylabel("PSI")
    ax.legend(fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
