"""Input types are checked before anything is written.

The table must be a base table of the database's main schema, named exactly
(:func:`pipeline.core.duck.require_table`): a view, a temporary table, a name that matches only ignoring case,
or a table of another schema or attached database is an :class:`InputError` that says which it is and gives
the SQL that makes a table to score (a view cannot take ``ALTER TABLE ... ADD COLUMN`` or ``UPDATE``).

The text column must be VARCHAR (any collation); a BLOB column is decoded as UTF-8 only with
``blob_as_utf8=True`` (``--blob-as-utf8``), and a BLOB that is not valid UTF-8 is refused naming the id of
its first bad row (no silent replacement characters). Anything else (INTEGER star ratings, DOUBLE, BOOLEAN,
DATE, VARCHAR[], STRUCT, MAP, JSON documents, ENUM categories, ...) is an :class:`InputError` naming the
table, the column and its type, and how to make a VARCHAR copy. The id column must be of a type that pages
(``ORDER BY id``, ``id > last``) and joins back exactly after a trip through Arrow and Python: integers,
DECIMAL, FLOAT/DOUBLE (no NaN id), VARCHAR, UUID, BLOB, DATE, TIME, TIMESTAMP (seconds to microseconds,
TIMESTAMPTZ) with values Python can hold (finite, years 1..9999). Refused: BOOLEAN, INTERVAL
('1 month' = '30 days'), BIT, TIMESTAMP_NS (Python parameters carry microseconds only, so paging would
stall), TIME WITH TIME ZONE, JSON, ENUM and nested types. Ids must be non-NULL and unique.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from pipeline.core.duck import is_unique_column, quote_ident, require_columns, require_table
from pipeline.core.errors import InputError

SENTIMENT_COLUMNS: dict[str, str] = {
    "sentiment_score": "DOUBLE",
    "sentiment_label": "VARCHAR",
    "sentiment_model": "VARCHAR",
    "scored_at": "TIMESTAMP WITH TIME ZONE",
    # added later (issue 11): last, so a table scored before gets it appended by its next run
    "sentiment_coverage": "DOUBLE",
}


def check_schema(con, db_path: Path, table: str, id_col: str, text_col: str, blob_as_utf8: bool) -> dict[str, str]:
    """The catalog half of :func:`check_table` (no row is read): the relation is a base table scoring can write
    back into, with an id and a text column of usable types and no clashing sentiment column; -> its column
    types."""
    require_table(con, table, db_path)
    cols = require_columns(con, table, [id_col, text_col])
    for name, typ in SENTIMENT_COLUMNS.items():
        if name in cols and cols[name] != typ:
            raise InputError(f"table {table!r} already has a column {name!r} of type {cols[name]}; "
                             f"scoring writes {typ} there", column=name)
    _check_text_column(table, text_col, cols[text_col], cols, blob_as_utf8)
    _check_id_type(table, id_col, cols[id_col])
    return cols


def check_table(con, db_path: Path, table: str, id_col: str, text_col: str, blob_as_utf8: bool) -> dict[str, str]:
    """Refuse a relation or table scoring cannot write back into (see the module docstring); -> its column types."""
    cols = check_schema(con, db_path, table, id_col, text_col, blob_as_utf8)
    _check_id_column(con, table, id_col, cols[id_col])
    T, ID = quote_ident(table), quote_ident(id_col)
    null_ids = con.execute(f"SELECT count(*) FROM {T} WHERE {ID} IS NULL").fetchone()[0]
    if null_ids:
        raise InputError(f"table {table!r} has {null_ids} row(s) with a NULL id; every row needs a "
                         f"non-NULL, unique id to be scored", column=id_col)
    if not is_unique_column(con, table, id_col):
        dups = con.execute(f"SELECT count(*) - count(DISTINCT {ID}) FROM {T}").fetchone()[0]
        if dups:
            raise InputError(f"table {table!r} has {dups} duplicate id(s); ids must be unique to write "
                             f"scores back (pick another --id-col)", column=id_col)
    if cols[text_col] == "BLOB":
        refuse_invalid_utf8(con, table, id_col, text_col)
    return cols


def _make_text_column(table: str, column: str) -> str:
    """The SQL a user runs to get a VARCHAR copy of ``column`` to score instead."""
    T, C, N = quote_ident(table), quote_ident(column), quote_ident(f"{column}_text")
    return (f"ALTER TABLE {T} ADD COLUMN {N} VARCHAR; UPDATE {T} SET {N} = CAST({C} AS VARCHAR); "
            f"then score with --text-col {column}_text")


def _check_text_column(table: str, column: str, typ: str, cols: dict[str, str], blob_as_utf8: bool) -> None:
    """Refuse a text column that does not hold text (see the module docstring for the rules)."""
    if typ == "VARCHAR" or (typ == "BLOB" and blob_as_utf8):
        return
    if typ == "BLOB":
        raise InputError(f"text column {column!r} of table {table!r} is BLOB (bytes), not VARCHAR: pass "
                         f"--blob-as-utf8 (blob_as_utf8=True) if it holds UTF-8 text, or convert it: "
                         f"{_make_text_column(table, column)}", column=column)
    texts = [c for c, t in cols.items() if t == "VARCHAR"]
    hint = f" VARCHAR columns of the table: {', '.join(texts)}." if texts else ""
    kind = {"JSON": "JSON documents", "ENUM": "categories"}.get(typ.split("(")[0], "not text")
    raise InputError(f"text column {column!r} of table {table!r} has type {typ} ({kind}); scoring needs a "
                     f"VARCHAR column with the review text.{hint} Pick another --text-col, or if this "
                     f"column really is the text, make a VARCHAR copy: {_make_text_column(table, column)}",
                     column=column)


_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
                  "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
_FLOAT_TYPES = {"FLOAT", "DOUBLE"}
_DATETIME_TYPES = {"DATE", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP WITH TIME ZONE"}
_PLAIN_ID_TYPES = _INTEGER_TYPES | _FLOAT_TYPES | _DATETIME_TYPES | {"VARCHAR", "UUID", "BLOB", "TIME"}


def _check_id_type(table: str, column: str, typ: str) -> None:
    """Refuse id types that do not survive keyset paging + the UPDATE join exactly."""
    if typ not in _PLAIN_ID_TYPES and not typ.startswith("DECIMAL("):
        raise InputError(
            f"id column {column!r} of table {table!r} has type {typ}, which cannot serve as a row id for "
            f"paging and writing scores back (ids must be integers, DECIMAL, FLOAT/DOUBLE, VARCHAR, UUID, "
            f"BLOB, DATE, TIME or TIMESTAMP up to microseconds). Pick another --id-col, or add one: "
            f"ALTER TABLE {quote_ident(table)} ADD COLUMN row_id BIGINT; UPDATE {quote_ident(table)} "
            f"SET row_id = rowid; then --id-col row_id", column=column)


def _check_id_column(con, table: str, column: str, typ: str) -> None:
    """Refuse id values that do not survive keyset paging + the UPDATE join exactly (NaN, infinite or
    out-of-range dates)."""
    T, ID = quote_ident(table), quote_ident(column)
    if typ in _FLOAT_TYPES:
        bad, why = f"isnan({ID})", "NaN"
    elif typ in _DATETIME_TYPES:
        bad, why = f"(NOT isfinite({ID}) OR year({ID}) NOT BETWEEN 1 AND 9999)", "infinite or outside years 1..9999"
    else:
        return
    n = con.execute(f"SELECT count(*) FROM {T} WHERE {bad}").fetchall()[0][0]
    if n:
        raise InputError(f"table {table!r} has {n} row(s) whose id is {why}; such ids cannot be paged and "
                         f"written back exactly. Give those rows real ids or pick another --id-col",
                         column=column)


def refuse_invalid_utf8(con, table: str, id_col: str, text_col: str, where: str = "TRUE",
                         params: Sequence = ()) -> None:
    """With ``--blob-as-utf8``: an InputError naming the first row (by id) whose BLOB is not UTF-8."""
    T, ID, TX = quote_ident(table), quote_ident(id_col), quote_ident(text_col)
    n, first = con.execute(
        f"SELECT count(*), min({ID}) FROM {T} WHERE {where} AND {TX} IS NOT NULL AND try(decode({TX})) IS NULL",
        list(params)).fetchall()[0]
    if n:
        raise InputError(f"text column {text_col!r} of table {table!r} holds {n} BLOB value(s) that are not "
                         f"valid UTF-8, the first at id {first!r}; fix or NULL those rows (nothing was "
                         f"decoded with replacement characters)", column=text_col)
