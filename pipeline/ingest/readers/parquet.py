"""Parquet files, streamed by record batch with pyarrow.parquet, reading only the mapped columns.

Errors name the row (record number, from 1). The file is opened with ``pipeline.core.userfiles.open_user_file``
(no link followed, regular files only) and pyarrow reads that open file, never the path."""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.errors import InputError
from pipeline.core.userfiles import open_user_file
from pipeline.ingest.columns import ColumnMap, resolve_columns
from pipeline.ingest.detect import Source
from pipeline.ingest.readers.base import ReadStats, normalize_batch, row_bar


def read_parquet(src: Source, cols: ColumnMap, stats: ReadStats, progress: bool = True,
                 batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
    path = src.location
    with open_user_file(path, within=src.within) as fh:
        try:
            pf = pq.ParquetFile(fh)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"not a readable Parquet file: {exc}", path=path) from None
        yield from _batches(pf, path, cols, stats, progress, batch_size)


def _batches(pf: pq.ParquetFile, path: str, cols: ColumnMap, stats: ReadStats, progress: bool,
             batch_size: int) -> Iterator[pa.RecordBatch]:
    roles = resolve_columns(pf.schema_arrow.names, cols, path)
    stats.columns = {k: v for k, v in roles.items() if v}
    include = list(dict.fromkeys(v for v in roles.values() if v))
    if pf.metadata.num_rows == 0:
        raise InputError("no rows (the Parquet file is empty)", path=path)
    with row_bar(path, progress, total=pf.metadata.num_rows) as bar:
        try:
            for batch in pf.iter_batches(batch_size=batch_size, columns=include):
                if batch.num_rows:
                    raw = {role: (batch.column(name) if name else None) for role, name in roles.items()}
                    out = normalize_batch(raw, batch.num_rows, roles, cols, stats, path)
                    bar.update(batch.num_rows)
                    yield out
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"cannot read Parquet near row {stats.rows_read + 1}: {exc}", path=path) from None
