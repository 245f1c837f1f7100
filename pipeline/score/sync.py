"""Lake dataset -> warehouse table ``<dataset>[_<split>]_scored``: the rows that scoring writes back into.

The table holds the lake columns (``pipeline.core.schema.REVIEW_SCHEMA``, in its order, with DuckDB's own
types for them: DuckDB derives them from the Arrow schema, so there is no type map to keep in step), then
the sentiment columns, and ``review_id`` as its PRIMARY KEY. New lake rows are appended by review_id;
rows already there, and the scores written into them, stay.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.dataset as pads

from pipeline.core.config import validate_name
from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT, connection, list_columns, quote_ident, table_exists
from pipeline.core.errors import InputError
from pipeline.core.schema import REVIEW_SCHEMA
from pipeline.ingest.lake import open_dataset
from pipeline.score.inputs import SENTIMENT_COLUMNS

_LAKE_VIEW = "__reviewflow_lake"
_KEY = "review_id"


def scored_table_name(dataset: str, split: str | None = None) -> str:
    """``<dataset>_scored``, or ``<dataset>_<split>_scored`` for one split of it."""
    validate_name(dataset, "dataset name")
    return f"{dataset}_{validate_name(split, 'split')}_scored" if split else f"{dataset}_scored"


def sync_dataset_table(wh, dataset: str, db_path: str | os.PathLike | None = None, *, split: str | None = None,
                       lock_timeout: float = DEFAULT_LOCK_TIMEOUT, on_wait=None) -> tuple[str, int]:
    """Create ``<dataset>[_<split>]_scored`` if missing and append the lake rows (of ``split`` only, when
    given) whose review_id it does not hold yet, in one transaction. -> (table, rows added)."""
    lake = open_dataset(wh, dataset)            # NotFoundError with known datasets if missing
    if split is not None:
        lake = lake.filter(pads.field("split") == split)
    db_path = Path(db_path) if db_path is not None else wh.duckdb_path
    table = scored_table_name(dataset, split)
    T = quote_ident(table)
    cols_sql = ", ".join(quote_ident(f.name) for f in REVIEW_SCHEMA)
    with connection(db_path, timeout=lock_timeout, on_wait=on_wait) as con:
        con.execute("BEGIN")
        con.register(_LAKE_VIEW, lake)
        if not table_exists(con, table):
            _create_table(con, T)
        missing = [f.name for f in REVIEW_SCHEMA if f.name not in list_columns(con, table)]
        if missing:
            raise InputError(f"table {table!r} exists but lacks lake column(s) {missing}")
        before = con.execute(f"SELECT count(*) FROM {T}").fetchone()[0]
        con.execute(
            f"INSERT OR IGNORE INTO {T} ({cols_sql}) SELECT {cols_sql} FROM {_LAKE_VIEW} AS s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {T} AS d WHERE d.{_KEY} = s.{_KEY})"
        )
        after = con.execute(f"SELECT count(*) FROM {T}").fetchone()[0]
        con.execute("COMMIT")
        con.unregister(_LAKE_VIEW)
    return table, int(after - before)


def _create_table(con, T: str) -> None:
    """The lake columns typed by DuckDB from the Arrow schema (no rows read), the sentiment columns, the key."""
    lake_cols = ", ".join(quote_ident(f.name) for f in REVIEW_SCHEMA)
    sentiment = ", ".join(f"CAST(NULL AS {t}) AS {quote_ident(n)}" for n, t in SENTIMENT_COLUMNS.items())
    con.execute(f"CREATE TABLE {T} AS SELECT {lake_cols}, {sentiment} FROM {_LAKE_VIEW} LIMIT 0")
    con.execute(f"ALTER TABLE {T} ADD PRIMARY KEY ({quote_ident(_KEY)})")
