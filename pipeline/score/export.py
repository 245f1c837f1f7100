"""Export a table (scored reviews, the audit tables) to a Parquet or CSV file: what users would otherwise try with
``COPY`` in user SQL, which the read-only ``sql`` path refuses (it writes files).

The database is opened read-only (a scoring run in progress is waited for); the file is written by DuckDB to a
temp name beside the target and renamed onto it, so a failed or interrupted export leaves any earlier file
exactly as it was. The format follows the extension: ``.parquet`` (zstd) or ``.csv``.

The target is a user-named output: :func:`pipeline.core.outputs.guard_output_path` refuses one inside the
warehouse's managed areas or among the database's own files (symlinks followed), an existing folder, a missing
folder, a symlink or a special file, before the database is even opened.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.config import Warehouse
from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT, connection, quote_ident, quote_literal, require_readable
from pipeline.core.errors import InputError, NotFoundError
from pipeline.core.outputs import guard_output_path
from pipeline.core.storage import atomic_path

FORMATS = {".parquet": "(FORMAT parquet, COMPRESSION zstd)", ".csv": "(FORMAT csv, HEADER true)"}


def export_table(db_path: str | os.PathLike, table: str, target: str | os.PathLike, *,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT, warehouse: Warehouse | None = None) -> int:
    """Write ``table`` of ``db_path`` to ``target`` (.parquet or .csv), atomically. -> rows written.
    ``warehouse``: the one whose managed areas the target may not be in (``db_path`` is protected either way)."""
    target = guard_output_path(target, warehouse, databases=[db_path])
    fmt = FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise InputError(f"export to {target.name!r}: the file name must end in {' or '.join(FORMATS)}")
    if not Path(db_path).exists():
        raise NotFoundError(f"DuckDB database {db_path} does not exist")
    with connection(db_path, read_only=True, timeout=lock_timeout) as con:
        require_readable(con, table, db_path)      # a table or a view of the main schema (views export too)
        with atomic_path(target) as tmp:
            con.execute(f"COPY (SELECT * FROM {quote_ident(table)}) TO {quote_literal(str(tmp))} {fmt}")
        return int(con.execute(f"SELECT count(*) FROM {quote_ident(table)}").fetchall()[0][0])
