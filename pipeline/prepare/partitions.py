"""Lake partitions for ``prepare``: plan them, and tokenize one into train token counts + spilled tokens.

Why partitions: the text pass (tokenize, dictionary-encode, count) is the only pass of ``prepare`` whose cost
grows with the text, and it needs nothing global but each row's split code. So the lake is cut into
partitions (whole part files, or runs of a part file's row groups, in lake order) and each one can be
tokenized by its own task, thread or process (:func:`tokenize_partition`). What comes back merges exactly:
train token counts are sums (the vocabulary sorts them totally: count, then token), and the encode pass walks
the partitions' spilled batches in row order. So a prep built from N partitions is byte for byte the one
built from one partition (``pipeline.prepare.job`` builds the single-process ``prepare`` on the same
functions, with one partition).

A partition's tokens are kept in memory up to ``spill_budget`` bytes and written to scratch files beyond it
(:class:`Spill`): a parallel task spills everything (budget 0), so its memory stays flat and what it
returns is small (the counts, tokens per row, and file names).
"""

from __future__ import annotations

import collections
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.core.errors import InputError
from pipeline.core.schema import LAKE_SCHEMA
from pipeline.prepare.config import PrepareConfig
from pipeline.prepare.text import kept_mask, tokenize
from pipeline.prepare.vocab import TokenCounter

TRAIN, VAL, TEST, UNSUP, SKIP = 0, 1, 2, 3, -1      # split code per row (SKIP: written nowhere)


# ------------------------------------------------------------------------------------------ planning
@dataclass(frozen=True)
class Piece:
    """Part of one lake file: its row groups ``row_groups`` (None: the whole file)."""
    path: str
    row_groups: tuple[int, ...] | None
    rows: int


@dataclass
class Partition:
    """Rows ``first_row .. first_row + rows`` of the dataset (lake order), read from ``pieces``, with their
    split codes (``assign``, int8): everything a task needs to tokenize them, and small to ship."""
    index: int
    pieces: list[Piece]
    first_row: int
    rows: int
    assign: np.ndarray | None = None


def _row_groups(path: str) -> list[int]:
    """Rows per row group of a lake part file (its footer only)."""
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def plan_partitions(files: list[str], partitions: int) -> list[Partition]:
    """Cut ``files`` (lake order) into at most ``partitions`` runs of row groups with about equal row counts.

    A run never reorders rows, so partition k's rows follow partition k-1's. With one partition, or as many
    files as partitions of equal size, every file is read whole. Empty partitions are left out."""
    units = []                                       # (file, row group, rows, row groups in the file)
    for f in files:
        groups = _row_groups(f)
        units += [(f, g, n, len(groups)) for g, n in enumerate(groups)]
    total = sum(u[2] for u in units)
    want = max(1, min(int(partitions), max(len(units), 1)))
    cuts = [total * k / want for k in range(1, want)]
    runs: list[list[tuple]] = [[]]
    done = 0
    for unit in units:      # a run ends at the row-group boundary nearest to its cut
        if runs[-1] and len(runs) <= len(cuts) and done + unit[2] / 2 >= cuts[len(runs) - 1]:
            runs.append([])
        runs[-1].append(unit)
        done += unit[2]
    out, first = [], 0
    for run in (r for r in runs if sum(u[2] for u in r)):
        pieces = _pieces(run)
        rows = sum(p.rows for p in pieces)
        out.append(Partition(len(out), pieces, first, rows))
        first += rows
    return out


def _pieces(run: list[tuple]) -> list[Piece]:
    """Consecutive row groups of one file as one piece (the whole file when it is all of it)."""
    by_file: dict[str, list[tuple]] = {}
    for unit in run:
        by_file.setdefault(unit[0], []).append(unit)
    pieces = []
    for path, us in by_file.items():
        groups = tuple(u[1] for u in us)
        pieces.append(Piece(path, None if len(groups) == us[0][3] else groups, sum(u[2] for u in us)))
    return pieces


def with_assign(parts: list[Partition], assign: np.ndarray) -> list[Partition]:
    """Give each partition its slice of the dataset's split codes (a copy: a task ships only its own)."""
    for p in parts:
        p.assign = np.ascontiguousarray(assign[p.first_row:p.first_row + p.rows])
    return parts


# ------------------------------------------------------------------------------------------ spilling
class Spill:
    """Per batch, the token dictionary and the kept batch-local token indices, for the encode pass: kept in
    memory up to ``budget`` bytes, then written to scratch files (Arrow IPC + ``.npy``, read back
    memory-mapped), so memory stays flat however large the dataset."""

    def __init__(self, scratch: Path, budget: int, prefix: str = ""):
        self.scratch, self.budget, self.prefix, self.used, self.items = Path(scratch), budget, prefix, 0, []

    def put(self, dictionary: pa.Array, local: np.ndarray) -> None:
        size = local.nbytes + dictionary.nbytes
        if self.used + size <= self.budget:
            self.used += size
            self.items.append((dictionary, local))
            return
        i = len(self.items)
        dpath = self.scratch / f"{self.prefix}dict-{i:06d}.arrow"
        lpath = self.scratch / f"{self.prefix}local-{i:06d}.npy"
        with pa.OSFile(str(dpath), "wb") as sink, pa.ipc.new_file(sink, pa.schema([("t", dictionary.type)])) as w:
            w.write_batch(pa.record_batch([dictionary], names=["t"]))
        np.save(lpath, local)
        self.items.append((dpath, lpath))

    def get(self, i: int) -> tuple[pa.Array, np.ndarray]:
        d, local = self.items[i]
        self.items[i] = None                    # release as we go
        if isinstance(d, Path):
            with pa.memory_map(str(d)) as src:
                d = pa.ipc.open_file(src).read_all().column(0).combine_chunks()
            local = np.load(local, mmap_mode="r")
        return d, local

    @classmethod
    def joined(cls, spills: Iterable["Spill"]) -> "Spill":
        """One spill whose batches are those of ``spills``, in order (the partitions' spills, for the encode
        pass)."""
        spills = list(spills)
        out = cls(spills[0].scratch if spills else Path("."), 0)
        for s in spills:
            out.items.extend(s.items)
        return out


# ------------------------------------------------------------------------------------------ tokenizing
@dataclass
class PartitionTokens:
    """What tokenizing a partition gives: the train rows' token counts, tokens per row before truncation,
    the first dataset row of each batch, and the batches' tokens (``spill``)."""
    index: int
    first_row: int
    rows: int
    counts: pa.Table                  # token (large_string), count (int64): train rows only
    train_tokens: int
    ntok: np.ndarray                  # int64 per row
    starts: list[int]
    spill: Spill
    seconds: float = 0.0


def ordered_map(fn, items: Iterable, workers: int, ahead: int | None = None):
    """``map`` over a thread pool, results in order, at most ``ahead`` items in flight (bounded memory)."""
    ahead = ahead or workers + 1
    if workers <= 1:
        for it in items:
            yield fn(*it)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="prepare") as ex:
        pending: collections.deque = collections.deque()
        for it in items:
            pending.append(ex.submit(fn, *it))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _source(part: Partition) -> pads.Dataset:
    """The partition's pieces as one dataset with the lake's schema (old parts read ``group_id`` as null)."""
    fmt, fs = pads.ParquetFileFormat(), pafs.LocalFileSystem()
    frags = [fmt.make_fragment(p.path, fs, row_groups=list(p.row_groups) if p.row_groups is not None else None)
             for p in part.pieces]
    return pads.FileSystemDataset(frags, LAKE_SCHEMA, fmt, fs)


def _text_batches(part: Partition, batch_rows: int, dataset: str):
    """(text, split codes, first dataset row) per record batch of the partition, in lake order."""
    off = 0
    # small readahead: the default (16 batches x 4 files) buffers hundreds of MB of text
    for batch in _source(part).to_batches(columns=["text"], batch_size=batch_rows, batch_readahead=2,
                                          fragment_readahead=1):
        m = batch.num_rows
        if off + m > part.rows:
            raise InputError(f"dataset {dataset!r} changed while being prepared")
        yield batch.column(0), part.assign[off:off + m], part.first_row + off
        off += m


def tokenize_batch(cfg: PrepareConfig, text: pa.Array, asg: np.ndarray, off: int):
    """Tokenize one batch, dictionary-encode its tokens, count the train rows' tokens and keep the
    batch-local indices of the tokens that survive truncation."""
    skip = asg == SKIP
    if skip.any():                                  # rows that go nowhere are not tokenized
        text = pc.if_else(pa.array(skip), pa.scalar("", text.type), text)
    tok = tokenize(text, cfg.strip_html)
    enc = pc.dictionary_encode(tok.values)
    d = enc.dictionary
    idx = enc.indices.to_numpy(zero_copy_only=False)
    train = asg == TRAIN
    if train.all():
        tcounts = np.bincount(idx, minlength=len(d))
    elif train.any():
        tcounts = np.bincount(idx[np.repeat(train, tok.counts)], minlength=len(d))
    else:
        tcounts = None
    keep = kept_mask(tok.counts, cfg.max_len, cfg.truncate)
    local = idx if keep is None else idx[keep]
    return off, d, tcounts, local.astype(np.int32, copy=False), tok.counts


def tokenize_partition(part: Partition, cfg: PrepareConfig, scratch: str | Path, *, dataset: str,
                       batch_rows: int = 4096, workers: int = 1, spill_budget: int = 0,
                       report: Callable[[int], None] | None = None) -> PartitionTokens:
    """Tokenize the text of ``part`` batch by batch (``workers`` threads): count the train rows' tokens,
    record tokens per row, spill the kept tokens of every batch (into ``scratch``, files named after the
    partition, beyond ``spill_budget`` bytes in memory). ``report(rows)`` after each batch."""
    t = time.perf_counter()
    counter = TokenCounter(compact_rows=1_000_000)
    spill = Spill(Path(scratch), spill_budget, prefix=f"p{part.index:05d}-")
    ntok = np.zeros(part.rows, np.int64)
    starts: list[int] = []
    done = 0
    batches = _text_batches(part, batch_rows, dataset)
    for off, d, tcounts, local, counts in ordered_map(functools.partial(tokenize_batch, cfg), batches, workers):
        if tcounts is not None:
            counter.add(d, tcounts)
        spill.put(d, local)
        ntok[off - part.first_row:off - part.first_row + len(counts)] = counts
        starts.append(off)
        done += len(counts)
        if report is not None:
            report(len(counts))
    if done != part.rows:
        raise InputError(f"dataset {dataset!r} changed while being prepared ({done} text rows in partition "
                         f"{part.index}, {part.rows} ids)")
    return PartitionTokens(part.index, part.first_row, part.rows, counter.table(), counter.total, ntok, starts,
                           spill, time.perf_counter() - t)


def check_cover(results: list[PartitionTokens], n: int) -> list[PartitionTokens]:
    """The partitions' results in row order, checked to cover rows ``0..n`` exactly once."""
    results = sorted(results, key=lambda r: r.first_row)
    at = 0
    for r in results:
        if r.first_row != at:
            raise ValueError(f"partition results do not cover the dataset: rows {at}..{r.first_row} are missing "
                             "or repeated")
        at += r.rows
    if at != n:
        raise ValueError(f"partition results cover {at} rows, the dataset has {n}")
    return results
