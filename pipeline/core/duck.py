"""DuckDB connection helpers: lock-aware opening, identifier quoting, existence checks.

DuckDB lets exactly one *process* hold a database file read-write, and while it does, no other
process can open the file at all, not even read-only ("Could not set lock on file ...").
So every process here (scoring writers, ``reviewflow sql`` readers) opens the file with
:func:`connect`, which retries with exponential backoff while the lock is held, says that it is
waiting, and gives up after a bounded time with a clear :class:`LockTimeout`. Writers keep
their connection only for short units of work (one chunk), so readers get in between.

Identifiers (table and column names) are never pasted into SQL raw: :func:`quote_ident` turns
any string, including ``x"; DROP TABLE y; --``, into one quoted identifier.

Files that :func:`connect` creates are written in the storage format of DuckDB 1.0
(:data:`STORAGE_COMPATIBILITY`), not DuckDB 2.0's own (storage version 69), so that every DuckDB 1.x
(the ``duckdb-cli`` 1.5 on PyPI, GUI tools that bundle 1.x) can open ``reviews.duckdb``. DuckDB keeps a
file's storage version for its whole life: writes by any later connection stay readable by 1.x, and a
file that already exists (a user's own database, or one made by an older reviewflow in the 2.0 format)
is opened as it is, never rewritten or converted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import duckdb

from pipeline.core.errors import InputError, NotFoundError, TemporaryFailure

log = logging.getLogger(__name__)

DEFAULT_LOCK_TIMEOUT = 120.0   # seconds a process waits for another one's lock before giving up
# DuckDB's ``storage_compatibility_version`` for NEW files: 'v1.0.0' writes storage version 64, which
# DuckDB 1.0 to 1.5 read ("we can only read versions between 64 and 68" is what 1.5 says about a 2.0 file).
# The cost: none of the compression methods added after 1.0 (files a little larger); no type reviewflow
# writes needs a newer format.
STORAGE_COMPATIBILITY = "v1.0.0"


class LockTimeout(TemporaryFailure):
    """Another process kept the database locked for longer than we were willing to wait."""


def is_lock_error(exc: BaseException) -> bool:
    msg = str(exc)
    return isinstance(exc, duckdb.Error) and ("Could not set lock" in msg or "Conflicting lock" in msg)


def _default_on_wait(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def connect(path: str | os.PathLike, *, read_only: bool = False, timeout: float = DEFAULT_LOCK_TIMEOUT,
            on_wait: Callable[[str], None] | None = _default_on_wait, first_delay: float = 0.05,
            max_delay: float = 2.0) -> duckdb.DuckDBPyConnection:
    """Open ``path``, waiting (exponential backoff, bounded by ``timeout`` s) while another process
    holds its lock. ``on_wait(message)`` is called once when waiting starts and then every ~5 s
    (default: print to stderr; pass ``None`` to stay quiet). Raises :class:`LockTimeout`.

    Read-only opens of a file that does not exist raise :class:`NotFoundError`.
    """
    path = Path(path)
    if read_only and not path.exists():
        raise NotFoundError(f"DuckDB database {path} does not exist")
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    delay = first_delay
    last_said = None
    # only a file this call creates gets the 1.x format; an existing one keeps its own (module doc)
    config = {} if read_only or path.exists() else {"storage_compatibility_version": STORAGE_COMPATIBILITY}
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.Error as exc:
            if not is_lock_error(exc):
                raise
            waited = time.monotonic() - start
            if waited >= timeout:
                raise LockTimeout(
                    f"gave up after {waited:.1f} s waiting for the lock on {path}: another process "
                    f"(a scoring run or another writer) kept it. Retry later or raise the wait "
                    f"limit (--lock-timeout). DuckDB said: {exc}"
                ) from None
            if last_said is None or waited - last_said >= 5.0:
                msg = (f"waiting for the writer… {path} is locked by another process "
                       f"(waited {waited:.1f} s, giving up after {timeout:.0f} s)")
                log.info(msg)
                if on_wait is not None:
                    on_wait(msg)
                last_said = waited
            time.sleep(min(delay, max(0.0, timeout - waited)))
            delay = min(delay * 2, max_delay)


@contextlib.contextmanager
def connection(path: str | os.PathLike, *, read_only: bool = False, **kwargs) -> Iterator[duckdb.DuckDBPyConnection]:
    """``with connection(path) as con:`` — :func:`connect` then always close (releasing the lock)."""
    con = connect(path, read_only=read_only, **kwargs)
    try:
        yield con
    finally:
        con.close()


# --------------------------------------------------------------------------- identifiers


def quote_ident(name: str) -> str:
    """Quote ``name`` as ONE SQL identifier: ``a"b`` -> ``"a""b"``. Rejects empty names and NULs."""
    if not isinstance(name, str) or name == "":
        raise InputError(f"invalid SQL identifier {name!r}: must be a non-empty string")
    if "\x00" in name:
        raise InputError(f"invalid SQL identifier {name!r}: contains a NUL character")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def list_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Base tables and views in the current schema."""
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = current_schema() AND NOT temporary "
        "UNION SELECT view_name FROM duckdb_views() WHERE database_name = current_database() "
        "AND schema_name = current_schema() AND NOT internal ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = current_schema() AND table_name = ?", [table]
    ).fetchone()[0] > 0


def require_table(con: duckdb.DuckDBPyConnection, table: str, db_path: str | os.PathLike | None = None) -> None:
    if not table_exists(con, table):
        known = ", ".join(repr(t) for t in list_tables(con)) or "none"
        where = f" in {db_path}" if db_path is not None else ""
        raise NotFoundError(f"table {table!r} not found{where}; tables that exist: {known}")


def list_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """``{column name: DuckDB type}`` in table order."""
    rows = con.execute(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
        "AND schema_name = current_schema() AND table_name = ? ORDER BY column_index", [table]
    ).fetchall()
    return {name: typ for name, typ in rows}


def require_columns(con: duckdb.DuckDBPyConnection, table: str, columns: list[str]) -> dict[str, str]:
    cols = list_columns(con, table)
    missing = [c for c in columns if c not in cols]
    if missing:
        listing = ", ".join(f"{c} {t}" for c, t in cols.items())
        raise NotFoundError(
            f"column{'s' if len(missing) > 1 else ''} {', '.join(repr(m) for m in missing)} not found in "
            f"table {table!r}; columns that exist: {listing}"
        )
    return cols


def primary_key(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    rows = con.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() WHERE database_name = current_database() "
        "AND schema_name = current_schema() AND table_name = ? AND constraint_type = 'PRIMARY KEY'", [table]
    ).fetchall()
    return list(rows[0][0]) if rows else []


def is_unique_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    """True when a PRIMARY KEY or UNIQUE constraint covers exactly ``column``."""
    rows = con.execute(
        "SELECT constraint_column_names FROM duckdb_constraints() WHERE database_name = current_database() "
        "AND schema_name = current_schema() AND table_name = ? AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')",
        [table],
    ).fetchall()
    return any(list(r[0]) == [column] for r in rows)
