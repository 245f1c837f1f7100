"""Read-only SQL over scored reviews, with a ``sentiment(text)`` function backed by a model.

``run_query`` opens the database **read-only** and waits (with backoff, saying so) while a
scoring run holds the file for a chunk; a scoring run commits each chunk in one transaction,
so a query sees whole chunks only. ``sentiment(text) -> DOUBLE`` is a vectorised Arrow UDF:
DuckDB hands it a whole vector of texts, the predictor scores them in one batched call.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import os
import re
from typing import Any, Callable

import numpy as np
import pyarrow as pa

import duckdb

from pipeline.duck import DEFAULT_LOCK_TIMEOUT, connection, list_tables
from pipeline.errors import NotFoundError

_SENTIMENT_CALL = re.compile(r"\bsentiment\s*\(", re.IGNORECASE)


def uses_sentiment(query: str) -> bool:
    """Does the query call ``sentiment(...)``? (Then the model is loaded; otherwise not.)"""
    return bool(_SENTIMENT_CALL.search(query))


def register_sentiment_udf(con, predictor, name: str = "sentiment") -> None:
    """Register ``name(text VARCHAR) -> DOUBLE`` (P(positive); NULL for NULL/empty text) on ``con``."""

    def _sentiment(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
        if isinstance(texts, pa.ChunkedArray):
            texts = texts.combine_chunks()
        probs = np.asarray(predictor.predict_proba(texts.to_pylist()), dtype=np.float64)
        return pa.array(probs, type=pa.float64(), mask=np.isnan(probs))

    con.create_function(name, _sentiment, ["VARCHAR"], "DOUBLE", type="arrow",
                        null_handling="special", side_effects=False)


def run_query(db_path: str | os.PathLike, query: str, *, predictor=None,
              load_predictor: Callable[[], Any] | None = None,
              lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
              on_wait: Callable[[str], None] | None = None) -> pa.Table:
    """Run ``query`` on a read-only connection and return the result as an Arrow table.

    If the query calls ``sentiment(``, the UDF is registered with ``predictor`` (or with
    ``load_predictor()``, called only then). Waits up to ``lock_timeout`` s for a writer.
    """
    if predictor is None and load_predictor is not None and uses_sentiment(query):
        predictor = load_predictor()
    with connection(db_path, read_only=True, timeout=lock_timeout, on_wait=on_wait) as con:
        if predictor is not None:
            register_sentiment_udf(con, predictor)
        try:
            rel = con.sql(query)
        except duckdb.CatalogException as exc:
            known = ", ".join(list_tables(con)) or "none"
            raise NotFoundError(f"{exc}\n(tables in {db_path}: {known})") from None
        if rel is None:          # a statement without a result (e.g. SET)
            return pa.table({})
        return rel.to_arrow_table()


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
