"""Stratified, seeded train/validation assignment that depends only on (review_id, label, seed).

Each review id gets a 64-bit hash (vectorised over the UTF-8 bytes, mixed with the seed); within each
label the ``round(n_label * val_fraction)`` rows with the smallest hashes go to validation. So every
class is represented in validation in its own proportion (the baseline's unshuffled 75/25 cut put a
single class there), the result is reproducible, and it needs only ids and labels (no text) in memory.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

_P = np.uint64(0x100000001B3)             # FNV prime (odd)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def hash_strings(strings: pa.Array | list[str], seed: int = 0) -> np.ndarray:
    """A stable 64-bit hash of each string (numpy, no Python loop per row)."""
    if not isinstance(strings, (pa.Array, pa.ChunkedArray)):
        strings = pa.array(strings, pa.string())
    if isinstance(strings, pa.ChunkedArray):
        strings = strings.combine_chunks()
    strings = strings.cast(pa.large_string())
    n = len(strings)
    bufs = strings.buffers()
    off = np.frombuffer(bufs[1], np.int64, count=strings.offset + n + 1)[strings.offset:]
    data = np.frombuffer(bufs[2], np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    data = data[off[0]:off[-1]].astype(np.uint64)
    off = off - off[0]
    lens = np.diff(off)
    pos = np.arange(len(data), dtype=np.int64) - np.repeat(off[:-1], lens)
    maxlen = int(lens.max()) if n else 0
    with np.errstate(over="ignore"):
        powers = np.ones(max(maxlen, 1), np.uint64)               # P**j, wrapping
        if maxlen > 1:
            powers[1:] = np.cumprod(np.full(maxlen - 1, _P, np.uint64), dtype=np.uint64)
        terms = (data + np.uint64(1)) * powers[pos]
        csum = np.concatenate([np.zeros(1, np.uint64), np.cumsum(terms, dtype=np.uint64)])
        h = csum[off[1:]] - csum[off[:-1]]
        h = h ^ (lens.astype(np.uint64) * _GOLDEN)
        return _mix(h ^ _mix(np.uint64(seed) + _GOLDEN))


def stratified_val_mask(review_ids: pa.Array | list[str], labels: np.ndarray, val_fraction: float,
                        seed: int = 0) -> np.ndarray:
    """Boolean mask: True = validation. Exactly ``round(n_c * val_fraction)`` per label value c."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    mask = np.zeros(len(labels), bool)
    if val_fraction == 0 or len(labels) == 0:
        return mask
    h = hash_strings(review_ids, seed)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = int(round(len(rows) * val_fraction))
        if k:
            order = np.lexsort((rows, h[rows]))       # by hash, ties by position
            mask[rows[order[:k]]] = True
    return mask
