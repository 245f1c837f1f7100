"""Read-only SQL over scored reviews, with a ``sentiment(text)`` function backed by a model.

``run_query`` opens the database **read-only** and waits (with backoff, saying so) while a
scoring run holds the file for a chunk; a scoring run commits each chunk in one transaction,
so a query sees whole chunks only. ``sentiment(text) -> DOUBLE`` is a vectorised Arrow UDF:
DuckDB hands it a whole vector of texts, the predictor scores them in one batched call.

"Read-only" must hold for the whole query surface, not only for the database file: DuckDB's
``read_only=True`` stops writes to *that* file, yet ``COPY ... TO``, ``ATTACH``, ``EXPORT
DATABASE`` or ``read_csv('/etc/passwd')`` would still reach the rest of the host. So user SQL
passes two independent guards (see docs/SECURITY.md):

1. :func:`check_statement` parses the text and lets through exactly ONE statement of a read
   type (SELECT and its spellings, EXPLAIN of one, CALL, PIVOT, informational PRAGMAs);
   anything else is a :class:`QueryRefused` naming what was refused and what is allowed.
2. :func:`query_connection` prepares everything the warehouse needs (the UDF, resource limits,
   a private spill folder) and then sets ``enable_external_access = false`` and
   ``lock_configuration = true`` *before* the user's statement runs, so DuckDB itself refuses
   every file, extension and setting change, even for a statement that slipped past guard 1.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime as dt
import decimal
import io
import json
import os
import re
import shutil
import tempfile
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa

import duckdb

from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT, connection, list_tables, list_views, quote_literal
from pipeline.core.errors import InputError, NotFoundError, QueryRefused, ReviewflowError
from pipeline.score.sql_functions import FUNCTION_CALL, Models
from pipeline.score.sql_functions import register as register_functions


ALLOWED = ("one SELECT (or WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE, PIVOT, UNPIVOT), "
           "EXPLAIN [ANALYZE] of one, CALL of a table function, or an informational PRAGMA")

#: PRAGMAs that only report (``PRAGMA table_info('reviews')``); the others change settings.
READ_PRAGMAS = frozenset({
    "collations", "database_list", "database_size", "functions", "metadata_info", "platform", "show",
    "show_databases", "show_tables", "show_tables_expanded", "storage_info", "table_info",
    "user_agent", "version",
})

_LEADING_NOISE = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|\()*", re.DOTALL)
_FIRST_WORD = re.compile(r"[A-Za-z_]+")
_EXPLAIN_PREFIX = re.compile(r"^EXPLAIN\b(?:\s+ANALY[SZ]E\b)?(?:\s*\([^)]*\))?", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class QueryLimits:
    """Resources one user query may use; set on the connection before its configuration is locked.

    ``memory_limit`` bounds DuckDB's buffer pool (a DuckDB size string such as ``"4GB"``; DuckDB's
    own default is 80% of RAM, too much on a box that also scores and trains); ``threads`` bounds
    CPU use; ``max_temp_size`` bounds what a query may spill to its private scratch folder when a
    join or sort outgrows ``memory_limit``. A query that needs more fails with a clear error.
    """

    memory_limit: str = "4GB"
    threads: int = dataclasses.field(default_factory=lambda: min(4, os.cpu_count() or 1))
    max_temp_size: str = "8GB"


def uses_sentiment(query: str) -> bool:
    """Does the query call ``sentiment(...)``, ``sentiment_label(...)`` or ``sentiment_explain(...)``? (Then the
    ML functions are registered; a model is loaded only when a function runs.)"""
    return bool(FUNCTION_CALL.search(query))


def sentiment_device(device: str = "cpu") -> str:
    """The device ``sentiment(text)`` scores on (``cpu``, ``cuda``, ``cuda:N``, or ``auto``: cuda when there
    is one), checked before the database is opened: a device this machine lacks is an ``InputError`` naming
    the ones it has. ``cpu`` (the default) needs no check, so a query that never calls sentiment() does not
    pay for importing torch."""
    if device == "cpu":
        return device
    from pipeline.model.device import pick_device      # deferred: torch

    return str(pick_device(device))


def readable_scores(predictor, texts: list) -> np.ndarray:
    """P(positive) per text, NaN where there is nothing to score or (for a predictor with
    ``predict_with_coverage``) the model cannot read the text: never a confident guess on unknown words."""
    with_coverage = getattr(predictor, "predict_with_coverage", None)
    if with_coverage is not None:
        return np.asarray(with_coverage(texts).score, dtype=np.float64)
    return np.asarray(predictor.predict_proba(texts), dtype=np.float64)


def register_sentiment_udf(con, predictor, name: str = "sentiment") -> None:  # the one-model UDF, for embedding
    """Register ``name(text VARCHAR) -> DOUBLE`` (P(positive); NULL for NULL/empty text, and for text the
    model cannot read: below its coverage rule, e.g. only unknown words) on ``con``."""

    def _sentiment(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        probs = readable_scores(predictor, texts.to_pylist())
        return pa.array(probs, type=pa.float64(), mask=np.isnan(probs))

    con.create_function(name, _sentiment, ["VARCHAR"], "DOUBLE", type="arrow",
                        null_handling="special", side_effects=False)


# --------------------------------------------------------------------------- guard 1: statement types


def _leading_keyword(text: str) -> str:
    """The first word of ``text``, upper-cased, after comments and parentheses (``"COPY"``)."""
    match = _FIRST_WORD.match(_LEADING_NOISE.sub("", text, count=1))
    return match.group(0).upper() if match else "?"


def _parse(query: str) -> list:
    """``duckdb.extract_statements`` with a syntax error turned into a one-line ReviewflowError."""
    try:
        return duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise ReviewflowError(f"query failed: {one_line(exc)}") from None


def _statement_type(statement):
    """The statement's ``duckdb.StatementType``; None for a type this build's Python enum lacks
    (``UPDATE EXTENSIONS`` parses, yet its type has no name in duckdb 2.0.1)."""
    try:
        return statement.type
    except ValueError:
        return None


def _refusal(what: str) -> QueryRefused:
    return QueryRefused(f"refused: {what} is not allowed here; user SQL may run {ALLOWED}")


def _check_one(statement) -> None:
    """Raise QueryRefused unless the single parsed ``statement`` only reads."""
    T = duckdb.StatementType
    text = _LEADING_NOISE.sub("", statement.query, count=1)
    keyword = _leading_keyword(text)
    kind = _statement_type(statement)
    if kind == T.SELECT or (kind == T.MULTI and keyword == "PIVOT"):
        return
    if kind == T.CALL and keyword == "CALL":            # CHECKPOINT is a CALL too, spelled otherwise
        return
    if keyword == "PRAGMA":                             # PRAGMA x = 1 is a SET; IMPORT DATABASE a PRAGMA
        name = _leading_keyword(text[len("PRAGMA"):]).lower()
        if kind == T.PRAGMA and name in READ_PRAGMAS:
            return
        raise _refusal(f"PRAGMA {name} (it changes settings or state)")
    if kind == T.EXPLAIN and keyword == "EXPLAIN":      # EXPLAIN ANALYZE runs its statement: check it
        inner = _parse(_EXPLAIN_PREFIX.sub("", text, count=1))
        if len(inner) == 1:
            return _check_one(inner[0])
    if kind in (T.SET, T.VARIABLE_SET):
        raise _refusal(f"{keyword} (settings are fixed for user SQL)")
    described = keyword if kind is None or kind.name == keyword else f"{keyword} (a {kind.name} statement)"
    raise _refusal(described)


def check_statement(query: str) -> None:
    """Guard 1: raise :class:`QueryRefused` unless ``query`` is exactly one read-only statement.

    Works on DuckDB's own parse (``duckdb.extract_statements``), so comments, case and
    whitespace cannot disguise a statement's type; ``SELECT 1; DROP TABLE t`` is two statements
    and refused as a whole before anything runs. A syntax error is a one-line ReviewflowError.
    """
    statements = _parse(query)
    if not statements:
        raise QueryRefused(f"refused: the query is empty; user SQL may run {ALLOWED}")
    if len(statements) > 1:
        kinds = ", ".join(_leading_keyword(s.query) for s in statements)
        raise QueryRefused(f"refused: {len(statements)} statements ({kinds}); user SQL may run "
                           f"exactly {ALLOWED}")
    _check_one(statements[0])


# --------------------------------------------------------------------------- guard 2: locked connection


def lock_down(con: duckdb.DuckDBPyConnection, limits: QueryLimits, scratch_dir: str) -> None:
    """Guard 2: fix resource limits, then turn off every route to files, extensions and settings.

    After this, DuckDB raises ``PermissionException`` for any file outside the open database
    (``read_csv``, ``COPY``, ``ATTACH``, ``EXPORT``, ``INSTALL``/``LOAD``), and every ``SET`` fails
    with "the configuration has been locked", including an attempt to undo this. Spills go to
    ``scratch_dir`` (private, outside the warehouse), never to DuckDB's default ``<db>.tmp``
    next to the database. Call it after registering UDFs and creating anything the warehouse needs.
    """
    prepared = {
        "memory_limit": limits.memory_limit,
        "threads": str(limits.threads),
        "max_temp_directory_size": limits.max_temp_size,
        "temp_directory": scratch_dir,
        "python_enable_replacements": "false",     # no scans of Python objects by variable name
        "autoinstall_known_extensions": "false",
        "autoload_known_extensions": "false",
    }
    for name, value in prepared.items():
        try:
            con.execute(f"SET {name} = {quote_literal(value)}")
        except duckdb.Error as exc:
            raise InputError(f"invalid query limit {name}={value!r}: {one_line(exc)}") from None
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


@contextlib.contextmanager
def query_connection(db_path: str | os.PathLike, *, predictor=None, models: Models | None = None,
                     lake=None, limits: QueryLimits | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                     on_wait: Callable[[str], None] | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection ready for user SQL: the ML functions registered (:mod:`pipeline.score.sql_functions`;
    over ``models``, or the one ``predictor``), the lake as the view ``reviews_lake`` (``lake``: a
    ``pyarrow.dataset``, read through Arrow, not through DuckDB's file access), then :func:`lock_down`. Its
    scratch folder is removed on exit."""
    scratch_dir = tempfile.mkdtemp(prefix="reviewflow-sql-")
    if models is None and predictor is not None:
        models = Models(default=predictor)
    try:
        with connection(db_path, read_only=True, timeout=lock_timeout, on_wait=on_wait) as con:
            if models is not None:
                register_functions(con, models)
            if lake is not None:
                con.register("reviews_lake", lake)
            lock_down(con, limits or QueryLimits(), scratch_dir)
            yield con
    finally:
        shutil.rmtree(scratch_dir, ignore_errors=True)


# --------------------------------------------------------------------------- running user SQL


def one_line(exc: BaseException) -> str:
    """DuckDB's message on one line: its caret diagram (``LINE 1: ...`` / ``^^^``) dropped."""
    lines = [line.strip() for line in str(exc).splitlines()]
    kept = [line for line in lines if line and not line.startswith("LINE ") and set(line) != {"^"}]
    return " ".join(kept)


_MISSING_TABLE = re.compile(r"Table with name (.+?) does not exist")


def _translate(exc: duckdb.Error, con: duckdb.DuckDBPyConnection, db_path) -> ReviewflowError:
    """Turn a DuckDB error from user SQL into the ReviewflowError the user should see."""
    message = one_line(exc)
    if isinstance(exc, duckdb.PermissionException):
        return QueryRefused(f"refused: user SQL cannot touch files, extensions or other databases, "
                            f"only the tables in {db_path} (DuckDB: {message})")
    if "configuration has been locked" in message or "read-only mode" in message:
        return QueryRefused(f"refused: user SQL cannot change settings or data (DuckDB: {message})")
    if isinstance(exc, duckdb.CatalogException):
        known = ", ".join(list_tables(con) + [f"{v} (view)" for v in list_views(con)]) or "none"
        missing = _MISSING_TABLE.search(message)
        if missing and re.search(r"[/\\]|\.\w+$", missing.group(1)):    # FROM '/etc/passwd'
            return QueryRefused(f"refused: {missing.group(1)!r} looks like a file; user SQL "
                                f"cannot read files, only the tables in {db_path}: {known}")
        return NotFoundError(f"{message} (tables in {db_path}: {known})")
    return ReviewflowError(f"query failed: {message}")


def run_query(db_path: str | os.PathLike, query: str, *, predictor=None,
              load_predictor: Callable[[], Any] | None = None, load_model: Callable[[str], Any] | None = None,
              lake=None, limits: QueryLimits | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
              on_wait: Callable[[str], None] | None = None) -> pa.Table:
    """Run ONE read-only ``query`` and return its result as an Arrow table.

    The statement is checked first (:func:`check_statement`), then runs on a
    :func:`query_connection`. If it calls ``sentiment(``, the UDF is registered with
    ``predictor`` (or with ``load_predictor()``, called only then). Waits up to ``lock_timeout``
    s for a writer. Every failure is a one-line :class:`ReviewflowError`: :class:`QueryRefused`
    for what the guards block, :class:`NotFoundError` for a missing table, else the DuckDB message.
    """
    check_statement(query)
    models = None
    if uses_sentiment(query) and (predictor is not None or load_predictor is not None or load_model is not None):
        models = Models(default=predictor, load=load_model, load_default=load_predictor)
    with query_connection(db_path, models=models, lake=lake, limits=limits, lock_timeout=lock_timeout,
                          on_wait=on_wait) as con:
        try:
            rel = con.sql(query)
            return rel.to_arrow_table() if rel is not None else pa.table({})
        except duckdb.Error as exc:
            raise _translate(exc, con, db_path) from None


# --------------------------------------------------------------------------- output formats


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat()
    s = str(v)
    return s.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _is_numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def format_table(tbl: pa.Table, *, max_rows: int = 1000, max_width: int = 80) -> str:
    """An aligned text table (numbers right-aligned), at most ``max_rows`` rows, cells cut at ``max_width``."""
    names = tbl.column_names
    shown = tbl.slice(0, max_rows)
    cols = []
    for name, col in zip(names, shown.columns):
        cells = [_cell(v) for v in col.to_pylist()]
        cells = [c if len(c) <= max_width else c[: max_width - 1] + "…" for c in cells]
        cols.append(cells)
    widths = [max([len(n)] + [len(c) for c in cells]) for n, cells in zip(names, cols)]
    numeric = [_is_numeric(f.type) for f in tbl.schema]
    def line(values):
        parts = []
        for v, w, num in zip(values, widths, numeric):
            parts.append(v.rjust(w) if num else v.ljust(w))
        return "  ".join(parts).rstrip()
    out = [line(names), "  ".join("-" * w for w in widths)]
    for i in range(shown.num_rows):
        out.append(line([c[i] for c in cols]))
    more = tbl.num_rows - shown.num_rows
    out.append(f"({tbl.num_rows} row{'s' if tbl.num_rows != 1 else ''}"
               + (f", first {max_rows} shown; use --format csv for all" if more > 0 else "") + ")")
    return "\n".join(out)


def _json_default(v: Any):
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, (bytes, bytearray)):
        return v.hex()
    return str(v)


def format_result(tbl: pa.Table, fmt: str = "table", **kwargs) -> str:
    if fmt == "table":
        return format_table(tbl, **kwargs)
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(tbl.column_names)
        for row in tbl.to_pylist():
            w.writerow(["" if v is None else v for v in row.values()])
        return buf.getvalue().rstrip("\n")
    if fmt == "json":
        return "\n".join(json.dumps(r, default=_json_default, ensure_ascii=False) for r in tbl.to_pylist())
    raise ValueError(f"unknown format {fmt!r}: use table, csv or json")
