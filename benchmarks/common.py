"""What the benchmarks share: real IMDb reviews put into a warehouse's lake by the pipeline's own writer.

Every benchmark starts from ``../shared/data/imdb/{train,unsup}.parquet`` (columns review_id, text, label,
rating, split). :func:`write_lake` turns them into lake parts with :func:`pipeline.ingest.lake.write_part`,
the same writer (schema, zstd, dedupe by review_id, atomic publish) ingest uses, so a benchmark reads the
lake exactly as the pipeline writes it.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:       # benchmarks run as scripts: `python benchmarks/x.py`
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from pipeline.core.config import Warehouse  # noqa: E402
from pipeline.core.schema import REVIEW_SCHEMA  # noqa: E402
from pipeline.ingest.lake import write_part  # noqa: E402

IMDB = ROOT.parent / "shared" / "data" / "imdb"
SOURCE_COLUMNS = ["review_id", "text", "label", "rating", "split"]
INGESTED_AT = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)   # fixed: the same lake bytes on every run
PART_ROWS = 250_000


def as_review_table(t: pa.Table, source: str) -> pa.Table:
    """Source columns plus ``source`` and ``ingested_at``, cast to the lake's schema."""
    n = t.num_rows
    t = t.append_column("source", pa.array([source] * n, pa.string()))
    t = t.append_column("ingested_at", pa.array([INGESTED_AT] * n, pa.timestamp("us", tz="UTC")))
    return t.select(REVIEW_SCHEMA.names).cast(REVIEW_SCHEMA)


def sample(t: pa.Table, rows: int | None, seed: int = 0) -> pa.Table:
    """``rows`` rows of ``t`` drawn without replacement (kept in file order), or all of it."""
    if not rows or rows >= t.num_rows:
        return t
    return t.take(np.sort(np.random.default_rng(seed).choice(t.num_rows, rows, replace=False)))


def replicated(sources: Sequence[Path], total: int, batch_size: int = 50_000) -> Iterator[pa.Table]:
    """Read ``sources`` again and again (ids suffixed ``-r<n>`` from the second pass) until ``total`` rows."""
    written, rep = 0, 0
    while written < total:
        for src in sources:
            for batch in pq.ParquetFile(src).iter_batches(batch_size=batch_size, columns=SOURCE_COLUMNS):
                batch = batch.slice(0, total - written)
                if rep:
                    rid = pc.binary_join_element_wise(batch.column("review_id"), pa.scalar(f"r{rep}"), "-")
                    batch = batch.set_column(0, "review_id", rid)
                if batch.num_rows:
                    yield as_review_table(pa.Table.from_batches([batch]), src.name)
                written += batch.num_rows
                if written >= total:
                    return
        rep += 1


def write_lake(wh: Warehouse, name: str, sources: Sequence[Path], *, rows: int | None = None,
               total: int | None = None, seed: int = 0) -> int:
    """Put reviews into lake dataset ``name`` of ``wh``; returns the rows written.

    ``total``: ``sources`` replicated with fresh ids up to that many rows, in parts of ``PART_ROWS``.
    Else every row of ``sources`` (or a seeded sample of ``rows`` of them) as one part per source."""
    wh.ensure()
    if total:
        return _write_in_parts(wh, name, replicated(sources, total))
    written = 0
    for src in sources:
        t = sample(pq.read_table(src, columns=SOURCE_COLUMNS), rows, seed)
        written += write_part(wh, name, as_review_table(t, Path(src).name)).rows_added
    return written


def _write_in_parts(wh: Warehouse, name: str, tables: Iterator[pa.Table]) -> int:
    written, pending, n = 0, [], 0
    for t in tables:
        pending.append(t)
        n += t.num_rows
        if n >= PART_ROWS:
            written += write_part(wh, name, pa.concat_tables(pending)).rows_added
            pending, n = [], 0
    if pending:
        written += write_part(wh, name, pa.concat_tables(pending)).rows_added
    return written


def ingest_source(wh: Warehouse, name: str, source: Path, *, rows: int | None = None, seed: int = 0,
                  group_col: str | None = None) -> int:
    """Put ``source`` (or a seeded sample of ``rows`` of it, written next to the lake first) into lake dataset
    ``name`` through the pipeline's own ingest (columns detected, labels checked, ``group_col`` kept as
    ``group_id`` for ``prepare --split-by group``); returns the rows added."""
    from pipeline.ingest.job import ingest

    if rows:
        t = pq.read_table(source)
        if rows < t.num_rows:
            picked = wh.root / "bench-sources" / f"{Path(source).stem}-{rows}-{seed}.parquet"
            picked.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(sample(t, rows, seed), picked)
            source = picked
    return ingest(wh, str(source), name, group_col=group_col, progress=False).rows_added
