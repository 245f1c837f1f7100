"""Vocabulary: streaming token counts, the deterministic id order, lookup (vectorised).

Ids: 0 ``<pad>``, 1 ``<unk>``, then tokens by descending count, ties broken by the token string
ascending (byte order), keeping tokens seen at least ``min_freq`` times, at most ``max_vocab`` ids in
total (the two specials included). Tokens never contain ``<`` (it is punctuation), so the specials can
never collide with a real token.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

PAD, UNK = "<pad>", "<unk>"
PAD_ID, UNK_ID = 0, 1
SPECIALS = (PAD, UNK)


class TokenCounter:
    """Merge per-batch (unique token, count) pairs without holding any text.

    Batches are appended as small Arrow tables and folded with a hash ``group_by`` whenever the
    pending rows exceed ``compact_rows``, so memory is bounded by the number of distinct tokens.
    """

    def __init__(self, compact_rows: int = 4_000_000):
        self._parts: list[pa.Table] = []
        self._pending = 0
        self.compact_rows = compact_rows
        self.total = 0

    def add(self, tokens: pa.Array, counts: np.ndarray) -> None:
        """``tokens``: distinct tokens of a batch; ``counts``: their counts (zeros are dropped)."""
        counts = np.asarray(counts, np.int64)
        nz = counts > 0
        if not nz.all():
            tokens, counts = tokens.filter(pa.array(nz)), counts[nz]
        if len(counts) == 0:
            return
        self.total += int(counts.sum())
        self._parts.append(pa.table({"token": tokens.cast(pa.large_string()), "count": counts}))
        self._pending += len(counts)
        if self._pending > self.compact_rows and len(self._parts) > 1:
            self._compact()

    def add_tokens(self, values: pa.Array) -> None:
        enc = pc.dictionary_encode(values)
        idx = enc.indices.to_numpy(zero_copy_only=False)
        self.add(enc.dictionary, np.bincount(idx, minlength=len(enc.dictionary)))

    def _compact(self) -> None:
        if len(self._parts) == 1:
            return
        t = pa.concat_tables(self._parts)
        enc = pc.dictionary_encode(t.column("token").combine_chunks())
        summed = np.bincount(enc.indices.to_numpy(zero_copy_only=False),
                             weights=t.column("count").to_numpy(), minlength=len(enc.dictionary))
        self._parts = [pa.table({"token": enc.dictionary, "count": summed.astype(np.int64)})]
        self._pending = len(enc.dictionary)

    def table(self) -> pa.Table:
        if not self._parts:
            return pa.table({"token": pa.array([], pa.large_string()), "count": pa.array([], pa.int64())})
        self._compact()
        return self._parts[0]


def merged_counts(tables: Iterable[pa.Table], compact_rows: int = 1_000_000) -> TokenCounter:
    """One counter over several (token, count) tables: the train counts of a prepare's partitions, merged
    in any order (sums), for :func:`build_vocab`."""
    counter = TokenCounter(compact_rows=compact_rows)
    for t in tables:
        counter.add(t.column("token").combine_chunks(), t.column("count").to_numpy())
    return counter


def build_vocab(counts: pa.Table, min_freq: int = 1, max_vocab: int | None = None) -> list[str]:
    """Specials, then tokens with count >= min_freq by (count desc, token asc), capped at max_vocab."""
    if min_freq < 1:
        raise ValueError("min_freq must be >= 1")
    if max_vocab is not None and max_vocab < len(SPECIALS):
        raise ValueError(f"max_vocab must be >= {len(SPECIALS)} (the special tokens)")
    t = counts.filter(pc.greater_equal(counts["count"], min_freq))
    t = t.sort_by([("count", "descending"), ("token", "ascending")])
    if max_vocab is not None:
        t = t.slice(0, max_vocab - len(SPECIALS))
    return list(SPECIALS) + t["token"].to_pylist()


def vocab_bytes(vocab: Sequence[str]) -> bytes:
    return ("\n".join(vocab) + "\n").encode("utf-8")


def vocab_sha256(vocab: Sequence[str]) -> str:
    return hashlib.sha256(vocab_bytes(vocab)).hexdigest()


def read_vocab(path: str | Path) -> list[str]:
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if lines[:2] != list(SPECIALS):
        raise ValueError(f"{path}: not a reviewflow vocabulary (first lines must be {SPECIALS})")
    return lines


class Lookup:
    """token -> id, vectorised (``pc.index_in`` against the vocabulary; unknown -> 1)."""

    def __init__(self, vocab: Sequence[str]):
        self.vocab = list(vocab)
        self._set = pa.array(self.vocab, pa.string())

    def __len__(self) -> int:
        return len(self.vocab)

    def ids(self, tokens: pa.Array) -> np.ndarray:
        if len(tokens) == 0:
            return np.zeros(0, np.int32)
        if pa.types.is_large_string(tokens.type):
            tokens = tokens.cast(pa.string())
        idx = pc.fill_null(pc.index_in(tokens, value_set=self._set), UNK_ID)
        return idx.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
