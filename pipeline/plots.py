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


def length_histogram(lengths, path: str | Path, max_len: int | None = None,
                     title: str = "Review length (tokens)") -> Path:
    """Histogram of token counts per review, with the truncation length marked. Returns ``path``."""
    lengths = np.asarray(lengths)
    fig = _figure()
    ax = fig.add_subplot()
    if len(lengths):
        hi = max(int(np.percentile(lengths, 99.5)), max_len or 0, 1)
        ax.hist(np.minimum(lengths, hi), bins=60, range=(0, hi), color="#4C72B0")
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
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
