"""How scoring cuts encoded texts into model batches: which rows go together and at what padded width.

Rows are sorted by token count and cut into consecutive batches, so a batch carries little padding. On CPU a
batch is ``batch_size`` rows (:func:`row_batches`), on CUDA a token budget (:func:`token_batches`). None of this
changes a CPU score (see :mod:`pipeline.serve.rowwise`): a batch has at least :data:`MIN_ROWS` rows (copies of
its last row fill a smaller one, :func:`filled`), and a Transformer's rows are grouped by width class, so that
each row is always computed at the width its own length gives it (:func:`width_classes`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.prepare.text import flat_ranges, pad_rows

#: fewest rows a CPU batch runs with: MKL computes a GEMM of 1-3 rows with other kernels (other rounding)
MIN_ROWS = 8
#: a Transformer row's padded width is its length rounded up to a multiple of this
WIDTH_STEP = 16
#: CPU rows per batch when the caller names none, by precision: what scored fastest on 2 cores (one batch per core;
#: default's BiGRU on 4,000 IMDb reviews, benchmarks/profile_score.py): a batch's working set then stays in cache
CPU_BATCH_ROWS = {"fp32": 64, "int8": 128}


@dataclass(frozen=True)
class Encoded:
    """The texts with tokens among ``n``: their positions ``rows``, their kept token ids unpadded, one text
    after another (``flat``), and their token counts ``lengths`` (all > 0). Rows are padded per batch only
    (:meth:`padded`), and an n-gram-only model never pads them."""

    n: int
    rows: np.ndarray
    flat: np.ndarray
    lengths: np.ndarray

    @classmethod
    def empty(cls, n: int) -> Encoded:
        return cls(n, np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32))

    @property
    def starts(self) -> np.ndarray:
        starts = np.zeros(len(self.lengths), np.int64)
        np.cumsum(self.lengths[:-1], out=starts[1:])
        return starts

    def subset(self, mask: np.ndarray) -> Encoded:
        if mask.all():
            return self
        sel = np.flatnonzero(mask)
        lengths = self.lengths[sel]
        return Encoded(self.n, self.rows[sel], self.flat[flat_ranges(self.starts[sel], lengths)], lengths)

    def padded(self, sel: np.ndarray, width: int, pad_side: str) -> np.ndarray:
        """Rows ``sel`` as ids [len(sel), width] padded with 0 on ``pad_side`` (what ``Preprocessor.encode``
        gives, trimmed to ``width`` columns)."""
        lengths = self.lengths[sel]
        return pad_rows(self.flat[flat_ranges(self.starts[sel], lengths)], lengths, width, pad_side)


def row_batches(sorted_lengths: np.ndarray, batch_size: int, workers: int = 1, step: int | None = None,
                cap: int | None = None) -> list[slice]:
    """Consecutive batches of rows sorted by length, ``batch_size`` rows each (smaller when that leaves fewer
    batches than ``workers``, so that every worker gets one). ``step``: no batch mixes width classes
    (:func:`width_classes` of ``step`` and ``cap``)."""
    size = max(min(batch_size, -(-len(sorted_lengths) // max(workers, 1))), 1)
    if step is None:
        return [slice(s, s + size) for s in range(0, len(sorted_lengths), size)]
    classes = width_classes(sorted_lengths, step, cap)
    bounds = np.flatnonzero(np.diff(classes)) + 1
    cuts = []
    for a, b in zip(np.r_[0, bounds], np.r_[bounds, len(classes)]):
        cuts += [slice(int(s), int(min(s + size, b))) for s in range(int(a), int(b), size)]
    return cuts


def width_classes(lengths: np.ndarray, step: int, cap: int | None = None) -> np.ndarray:
    """Each row's padded width when it is computed at a width its own length fixes: the length rounded up to a
    multiple of ``step``, at most ``cap`` (a row's score then never depends on the longest row it is batched
    with)."""
    lengths = np.maximum(np.asarray(lengths, np.int64), 1)
    widths = -(-lengths // step) * step
    return widths if cap is None else np.minimum(widths, max(int(cap), 1))


def filled(sel: np.ndarray, rows: int = MIN_ROWS) -> np.ndarray:
    """``sel`` with its last row repeated up to ``rows`` rows (their outputs are dropped): small batches run
    with the same kernels as large ones."""
    if len(sel) >= rows or not len(sel):
        return sel
    return np.concatenate([sel, np.repeat(sel[-1:], rows - len(sel))])


def token_batches(sorted_lengths: np.ndarray, budget: int, *, fixed_width: int | None = None) -> list[slice]:
    """Consecutive batches of rows sorted by length (ascending) whose padded size, rows x the batch's longest
    row (x ``fixed_width`` when every row is padded to it), stays within ``budget`` tokens; a row longer than
    the budget is a batch alone. Short texts thus travel many to a batch, long ones few, and every batch costs
    about the same memory and time. Rows of length 0 count as 1 (a model reads at least one position)."""
    if budget < 1:
        raise ValueError("token budget must be >= 1")
    lengths = np.maximum(np.asarray(sorted_lengths, np.int64), 1)
    if fixed_width is not None:
        lengths = np.full(len(lengths), max(int(fixed_width), 1), np.int64)
    cuts, start, n = [], 0, len(lengths)
    while start < n:
        window = lengths[start:start + max(budget // int(lengths[start]), 1)]     # no longer batch fits
        cost = np.arange(1, len(window) + 1) * window           # rows so far x longest so far (sorted)
        size = max(int(np.searchsorted(cost, budget, side="right")), 1)
        cuts.append(slice(start, start + size))
        start += size
    return cuts
