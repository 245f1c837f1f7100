"""The Parquet lake: ``<root>/lake/reviews/dataset=<name>/*.parquet`` (read side)."""

from __future__ import annotations

from typing import Iterator, Sequence

import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.config import Warehouse
from pipeline.errors import NotFoundError
from pipeline.schema import REVIEW_SCHEMA


def list_datasets(wh: Warehouse) -> list[str]:
    if not wh.lake.exists():
        return []
    return sorted(p.name.split("=", 1)[1] for p in wh.lake.glob("dataset=*") if any(p.glob("*.parquet")))


def dataset_files(wh: Warehouse, name: str) -> list[str]:
    """The dataset's Parquet part files, sorted (temp files start with '.' and are never listed)."""
    d = wh.dataset_dir(name)
    files = sorted(str(p) for p in d.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        known = ", ".join(list_datasets(wh)) or "none"
        raise NotFoundError(f"dataset {name!r} has no data in {d} (known datasets: {known}); run `reviewflow ingest` first")
    return files


def open_dataset(wh: Warehouse, name: str) -> ds.Dataset:
    return ds.dataset(dataset_files(wh, name), schema=REVIEW_SCHEMA, format="parquet")


def iter_batches(wh: Warehouse, name: str, columns: Sequence[str] | None = None,
                 filter=None, batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
    """Stream the dataset in record batches (memory does not grow with its size)."""
    yield from open_dataset(wh, name).to_batches(columns=list(columns) if columns else None,
                                                 filter=filter, batch_size=batch_size)


def read_table(wh: Warehouse, name: str, columns: Sequence[str] | None = None, filter=None) -> pa.Table:
    return open_dataset(wh, name).to_table(columns=list(columns) if columns else None, filter=filter)
