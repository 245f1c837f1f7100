"""Copy one split of a lake dataset into its own DuckDB table (e.g. the test rows the main job scores).

Incremental like ingest: rows are keyed by ``review_id`` (PRIMARY KEY); a re-run only adds lake rows the
table does not hold yet, so sentiment columns already written stay as they are.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from pipeline.config import Warehouse, validate_name
from pipeline.duck import connection, list_columns, quote_ident
from pipeline.errors import InputError
from pipeline.lake import open_dataset
from pipeline.schema import REVIEW_SCHEMA

_TYPES = {pa.string(): "VARCHAR", pa.int8(): "TINYINT", pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ"}


def split_counts(wh: Warehouse, dataset: str) -> dict[str, int]:
    """Rows per split in the lake dataset (``null`` split counted as ``"none"``)."""
    import pyarrow.compute as pc

    col = open_dataset(wh, dataset).to_table(columns=["split"]).column("split")
    counts = pc.value_counts(col).to_pylist()
    return {(r["values"] if r["values"] is not None else "none"): int(r["counts"]) for r in counts}


def split_table_name(dataset: str, split: str) -> str:
    return f"{validate_name(dataset, 'dataset name')}_{validate_name(split, 'split')}_scored"


def sync_split_table(wh: Warehouse, dataset: str, split: str, db_path: str | os.PathLike | None = None,
                     table: str | None = None) -> tuple[str, int]:
    """Create ``<dataset>_<split>_scored`` (lake columns, PRIMARY KEY review_id) if needed and append the
    split's lake rows it lacks, in one transaction. Returns ``(table, rows_added)``."""
    table = table or split_table_name(dataset, split)
    db_path = Path(db_path) if db_path is not None else wh.duckdb_path
    rows = open_dataset(wh, dataset).to_table(filter=ds.field("split") == split)
    names = [f.name for f in REVIEW_SCHEMA]
    defs = ", ".join(f"{quote_ident(f.name)} {_TYPES[f.type]}" + (" PRIMARY KEY" if f.name == "review_id" else "")
                     for f in REVIEW_SCHEMA)
    T, cols = quote_ident(table), ", ".join(quote_ident(n) for n in names)
    view = "__reviewflow_split_rows"
    with connection(db_path) as con:
        con.execute("BEGIN")
        con.execute(f"CREATE TABLE IF NOT EXISTS {T} ({defs})")
        missing = [n for n in names if n not in list_columns(con, table)]
        if missing:
            raise InputError(f"table {table!r} exists but lacks lake column(s) {missing}")
        con.register(view, rows)
        before = con.execute(f"SELECT count(*) FROM {T}").fetchone()[0]
        con.execute(f"INSERT INTO {T} ({cols}) SELECT {cols} FROM {view} AS s "
                    f"WHERE NOT EXISTS (SELECT 1 FROM {T} AS d WHERE d.review_id = s.review_id)")
        after = con.execute(f"SELECT count(*) FROM {T}").fetchone()[0]
        con.execute("COMMIT")
        con.unregister(view)
    return table, int(after - before)
