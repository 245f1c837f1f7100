"""Readers for every kind of review source, each a stream of ``SOURCE_SCHEMA`` record batches.

``read_source`` picks the reader for a detected :class:`~pipeline.ingest.detect.Source`:

=================  ==================================================
csv / tsv          :mod:`pipeline.ingest.readers.csv`
jsonl              :mod:`pipeline.ingest.readers.jsonl`
parquet            :mod:`pipeline.ingest.readers.parquet`
aclimdb-*          :mod:`pipeline.ingest.readers.aclimdb` (folder; tarball from a path or a URL)
=================  ==================================================

Column mapping and coercion live in :mod:`pipeline.ingest.columns`; counters and located errors in
:mod:`pipeline.ingest.readers.base`. Every local file is opened with
:func:`pipeline.core.userfiles.open_user_file` (never a link, never a FIFO or device) and read through that
open file object, never by path.
"""

from __future__ import annotations

from typing import Iterator

import pyarrow as pa

from pipeline.ingest.columns import ColumnMap
from pipeline.ingest.detect import Source
from pipeline.ingest.download import open_local, open_url
from pipeline.ingest.readers.aclimdb import read_aclimdb_folder, read_aclimdb_tar
from pipeline.ingest.readers.base import ReadStats
from pipeline.ingest.readers.csv import read_csv
from pipeline.ingest.readers.jsonl import read_jsonl
from pipeline.ingest.readers.parquet import read_parquet

_FILE_READERS = {"csv": read_csv, "tsv": read_csv, "jsonl": read_jsonl, "parquet": read_parquet}


def read_source(src: Source, cols: ColumnMap | None = None, stats: ReadStats | None = None, *,
                progress: bool = True) -> Iterator[pa.RecordBatch]:
    """Stream ``src`` as SOURCE_SCHEMA record batches. Raises ``InputError`` naming the file, row, column."""
    cols = cols or ColumnMap()
    stats = stats if stats is not None else ReadStats()
    if src.kind in _FILE_READERS:
        yield from _FILE_READERS[src.kind](src, cols, stats, progress)
    elif src.kind == "aclimdb-folder":
        yield from read_aclimdb_folder(src, stats, progress)
    elif src.kind in ("aclimdb-tarball", "aclimdb-url"):
        opener = (open_url(src.location, progress=progress) if src.kind == "aclimdb-url" else
                  open_local(src.location, progress=progress, within=src.within))
        with opener as fh:
            yield from read_aclimdb_tar(fh, src.location, stats)
    else:  # pragma: no cover - detect() only returns KINDS
        raise ValueError(src.kind)
