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
from dataclasses import dataclass
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
    """Base tables of the current schema (what scoring can write into); views are :func:`list_views`."""
    rows = con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() "
        "AND schema_name = current_schema() AND NOT temporary ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def list_views(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Views of the current schema (readable, but they cannot take columns or updates)."""
    rows = con.execute(
        "SELECT view_name FROM duckdb_views() WHERE database_name = current_database() "
        "AND schema_name = current_schema() AND NOT internal AND NOT temporary ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def describe_relations(con: duckdb.DuckDBPyConnection) -> str:
    """``tables that exist: 'a', 'b'; views (read only): 'v'`` for error messages (views only when any)."""
    tables = ", ".join(repr(t) for t in list_tables(con)) or "none"
    views = ", ".join(repr(v) for v in list_views(con))
    return f"tables that exist: {tables}" + (f"; views (read only): {views}" if views else "")


def table_exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Is ``table`` exactly the name of a base table of the current schema (see :func:`find_relation`)?"""
    rel = find_relation(con, table)
    return rel is not None and rel.kind == "table" and rel.name == table


# --------------------------------------------------------------------------- what a name refers to


@dataclass(frozen=True)
class Relation:
    """What DuckDB resolves a table name to: ``kind`` is ``table``, ``view``, ``temporary table`` or
    ``temporary view``; ``name`` as the catalog spells it (DuckDB names ignore case)."""
    kind: str
    name: str
    database: str
    schema: str
    read_only: bool
    sql: str


_RELATIONS = """
SELECT kind, r.name, r.database_name, r.schema_name, coalesce(d.readonly, false), coalesce(r.sql, ''), temporary
FROM (SELECT CASE WHEN temporary THEN 'temporary table' ELSE 'table' END AS kind, table_name AS name,
             database_name, schema_name, temporary, sql FROM duckdb_tables()
      UNION ALL
      SELECT CASE WHEN temporary THEN 'temporary view' ELSE 'view' END, view_name, database_name, schema_name,
             temporary, sql FROM duckdb_views() WHERE NOT internal) AS r
LEFT JOIN duckdb_databases() AS d USING (database_name)
"""


def find_relation(con: duckdb.DuckDBPyConnection, name: str) -> Relation | None:
    """The relation the quoted identifier ``name`` resolves to, as DuckDB resolves it: case-insensitively, a
    temporary table or view first, then the current database's current schema. None when neither has it."""
    rows = con.execute(
        _RELATIONS + "WHERE lower(r.name) = lower(?) AND (temporary OR (r.database_name = current_database() "
        "AND r.schema_name = current_schema())) ORDER BY temporary DESC, r.name = ? DESC", [name, name]).fetchall()
    return Relation(*rows[0][:6]) if rows else None


def relations_elsewhere(con: duckdb.DuckDBPyConnection, name: str) -> list[Relation]:
    """Relations outside the current schema that ``name`` may mean: the same name in another schema or
    database, or ``name`` written as ``schema.table`` / ``database.schema.table`` (one identifier here)."""
    rows = con.execute(
        _RELATIONS + "WHERE NOT temporary AND NOT (r.database_name = current_database() AND r.schema_name = "
        "current_schema()) AND r.database_name NOT IN ('system', 'temp') AND lower(?) IN (lower(r.name), "
        "lower(r.schema_name || '.' || r.name), lower(r.database_name || '.' || r.schema_name || '.' || r.name)) "
        "ORDER BY 3, 4, 2", [name]).fetchall()
    return [Relation(*r[:6]) for r in rows]


def require_table(con: duckdb.DuckDBPyConnection, table: str, db_path: str | os.PathLike | None = None) -> None:
    """Refuse ``table`` unless it is exactly the name of a base table of the current schema, the kind of
    relation that takes new columns and updates (what scoring writes). A view, a temporary table or a name
    that matches only ignoring case, or a relation of another schema or attached database (read-only or not)
    that ``table`` names: :class:`InputError` saying which and what to do instead (the SQL that makes a table
    of it here). Nothing of that name: :class:`NotFoundError` listing the tables and views there are."""
    where = f" in {db_path}" if db_path is not None else ""
    rel = find_relation(con, table)
    if rel is None:
        _raise_not_found(con, table, where)
    if rel.kind != "table":
        raise InputError(_cannot_take_columns(rel, table, where))
    if rel.name != table:
        raise InputError(_case_differs(rel, table, where))


def require_readable(con: duckdb.DuckDBPyConnection, table: str, db_path: str | os.PathLike | None = None) -> Relation:
    """Refuse ``table`` unless it names a base table or a view of the current schema (what an export reads;
    any case, as DuckDB resolves it); a temporary relation or none: as :func:`require_table`. -> it."""
    where = f" in {db_path}" if db_path is not None else ""
    rel = find_relation(con, table)
    if rel is None:
        _raise_not_found(con, table, where)
    if rel.kind not in ("table", "view"):
        raise InputError(_cannot_take_columns(rel, table, where))
    return rel


def _raise_not_found(con: duckdb.DuckDBPyConnection, table: str, where: str) -> None:
    """:class:`NotFoundError` listing what there is; :class:`InputError` when ``table`` names a relation of
    another schema or attached database (it exists, but not where reviewflow reads and writes)."""
    message = f"table {table!r} not found{where}; {describe_relations(con)}"
    others = relations_elsewhere(con, table)
    if not others:
        raise NotFoundError(message)
    rel = others[0]
    here, schema = con.execute("SELECT current_database(), current_schema()").fetchone()
    parts = (rel.schema, rel.name) if rel.database == here else (rel.database, rel.schema, rel.name)
    source = ".".join(quote_ident(x) for x in parts)
    home = f"schema {rel.schema!r}" if rel.database == here else \
        f"database {rel.database!r}{' (attached read-only)' if rel.read_only else ''}"
    raise InputError(f"{table!r}{where} is not a table of schema {schema!r}, the one reviewflow reads and writes: "
                     f"it is a {rel.kind} {rel.name!r} in {home}; {describe_relations(con)}. Copy it into "
                     f"{schema!r} (CREATE TABLE {quote_ident(rel.name)} AS SELECT * FROM {source}) and pass "
                     f"--table {rel.name}")


def _one_line(sql: str, limit: int = 120) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _cannot_take_columns(rel: Relation, table: str, where: str) -> str:
    """Why ``rel`` cannot take the sentiment columns, and the SQL that makes a table of it."""
    copy = f"{rel.name}_table"
    make = f"CREATE TABLE {quote_ident(copy)} AS SELECT * FROM {quote_ident(rel.name)}; then --table {copy}"
    if rel.kind == "view":
        return (f"{table!r}{where} is a VIEW ({_one_line(rel.sql.rstrip().rstrip(';'))}), not a table: scoring adds columns to the "
                f"table (ALTER TABLE ... ADD COLUMN) and writes scores into its rows, which a view cannot take. "
                f"Score the table the view reads from, or make a table of it: {make}")
    return (f"{table!r}{where} is a {rel.kind.upper()}: it lives only in the connection that made it (and "
            f"hides any table of that name). Make a real table of it: {make}")


def _case_differs(rel: Relation, table: str, where: str) -> str:
    return (f"no table is named exactly {table!r}{where}; there is {rel.name!r}, which differs only in case. "
            f"DuckDB ignores case in names, but reviewflow keys a table's claim and audit rows on the exact "
            f"name: pass --table {rel.name}")


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
