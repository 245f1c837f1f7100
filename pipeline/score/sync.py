"""Lake dataset -> warehouse table ``<dataset>[_<split>]_scored``: the rows that scoring writes back into.

The table holds the lake columns (``pipeline.core.schema.LAKE_SCHEMA``, in its order, with DuckDB's own
types for them: DuckDB derives them from the Arrow schema, so there is no type map to keep in step), then
the sentiment columns, and ``review_id`` as its PRIMARY KEY. New lake rows are appended by review_id;
rows already there, and the scores written into them, stay.

A table made before a lake column existed (``group_id``) gets it added, at the end, the first time it is
synced (``_add_new_lake_columns``), filled from the lake for the rows it already holds.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.dataset as pads

from pipeline.core.config import validate_name
from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT, connection, find_relation, list_columns, quote_ident, require_table
from pipeline.core.errors import InputError
from pipeline.core.schema import LAKE_SCHEMA, OPTIONAL_FIELDS, REVIEW_SCHEMA
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
    cols_sql = ", ".join(quote_ident(f.name) for f in LAKE_SCHEMA)
    with connection(db_path, timeout=lock_timeout, on_wait=on_wait) as con:
        con.execute("BEGIN")
        con.register(_LAKE_VIEW, lake)
        if find_relation(con, table) is None:
            _create_table(con, T)
        require_table(con, table, db_path)      # a view (or another case) of that name is refused, not written
        missing = [f.name for f in REVIEW_SCHEMA if f.name not in list_columns(con, table)]
        if missing:
            raise InputError(f"table {table!r} exists but lacks lake column(s) {missing}")
        _add_new_lake_columns(con, table)
        before = con.execute(f"SELECT count(*) FROM {T}").fetchone()[0]
        con.execute(
            f"INSERT OR IGNORE INTO {T} ({cols_sql}) SELECT {cols_sql} FROM {_LAKE_VIEW} AS s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {T} AS d WHERE d.{_KEY} = s.{_KEY})"
        )
        after = con.execute(f"SELECT count(*) FROM {T}").fetchone()[0]
        con.execute("COMMIT")
        con.unregister(_LAKE_VIEW)
    return table, int(after - before)


def _add_new_lake_columns(con, table: str) -> None:
    """Add the optional lake columns (``OPTIONAL_FIELDS``) an older table lacks, typed the way DuckDB types
    them from Arrow, and copy their lake values into the rows the table already holds."""
    T = quote_ident(table)
    have = list_columns(con, table)
    for f in OPTIONAL_FIELDS:
        if f.name in have:
            continue
        c = quote_ident(f.name)
        sql_type = con.execute(f"DESCRIBE SELECT {c} FROM {_LAKE_VIEW}").fetchone()[1]
        con.execute(f"ALTER TABLE {T} ADD COLUMN {c} {sql_type}")
        con.execute(f"UPDATE {T} AS d SET {c} = s.{c} FROM {_LAKE_VIEW} AS s "
                    f"WHERE d.{_KEY} = s.{_KEY} AND s.{c} IS NOT NULL")


def _create_table(con, T: str) -> None:
    """The lake columns typed by DuckDB from the Arrow schema (no rows read), the sentiment columns, the key."""
    lake_cols = ", ".join(quote_ident(f.name) for f in LAKE_SCHEMA)
    sentiment = ", ".join(f"CAST(NULL AS {t}) AS {quote_ident(n)}" for n, t in SENTIMENT_COLUMNS.items())
    con.execute(f"CREATE TABLE {T} AS SELECT {lake_cols}, {sentiment} FROM {_LAKE_VIEW} LIMIT 0")
    con.execute(f"ALTER TABLE {T} ADD PRIMARY KEY ({quote_ident(_KEY)})")
