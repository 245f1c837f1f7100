"""Challenger models beside the champion: shadow scores, and a side-by-side comparison on the user's own table.

**Shadow scoring** (``reviewflow score --table T --shadow challenger``): after the champion's run, the shadow
model scores the same table into the table ``sentiment_shadow`` — never into the table's own columns::

    table_name VARCHAR, id VARCHAR (the row's id as text), model VARCHAR, score DOUBLE (NULL: 'unknown'),
    label VARCHAR, scored_at TIMESTAMPTZ; PRIMARY KEY (table_name, id, model)

Incremental as the champion's columns are: a row with text that this model has no shadow row for is a
candidate; chunks in id order, one transaction each (``INSERT ... ON CONFLICT DO NOTHING``), so an
interrupted shadow run loses nothing and a rerun finds only the rest. The same checks as scoring: a score
outside 0..1 or NaN for real text fails the run (:class:`pipeline.score.writeback.ModelOutputError`); text
the model cannot read gets the label 'unknown'. The table's claim is held while it runs.

**Comparison** (:func:`compare_models`, ``reviewflow models compare A B --table T [--label-col label]``): both
models score the table's texts (or the first ``limit`` rows by id); the report gives the agreement of their
labels, each model's accuracy when a label column exists, and the rows where their scores differ most.
Promotion can record it (``reviewflow models promote V --compare-table T``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa

from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT, connection, quote_ident
from pipeline.core.errors import InputError
from pipeline.score.attach import Attached
from pipeline.score.claim import table_claim
from pipeline.score.inputs import check_table
from pipeline.score.writeback import (PredictorLike, TableRun, check_arguments, predict_chunk_with_coverage,
                                      score_page)

SHADOW_TABLE = "sentiment_shadow"
SHADOW_DDL = f"""
CREATE TABLE IF NOT EXISTS {SHADOW_TABLE} (
    table_name VARCHAR NOT NULL,
    id VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    score DOUBLE,
    label VARCHAR NOT NULL,
    scored_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (table_name, id, model)
)"""
_CHUNK = "__reviewflow_shadow_chunk"
_BLANK = "'[ \\t\\n\\x0b\\x0c\\r]*'"


def _has_text(expr: str) -> str:
    return f"({expr} IS NOT NULL AND NOT regexp_full_match({expr}, {_BLANK}))"


def score_shadow(db_path: str | Path, table: str, predictor: PredictorLike, *, id_col: str = "review_id",
                 text_col: str = "text", threshold: float = 0.5, chunk_rows: int = 16_384,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT, on_wait: Callable[[str], None] | None = None) -> dict:
    """Score ``table`` with the shadow ``predictor`` into ``sentiment_shadow`` (see the module docstring).
    -> {model, rows_scored, rows_unknown, rows_skipped, chunks}."""
    db_path = check_arguments(db_path, table, id_col, text_col, threshold, chunk_rows=chunk_rows)
    version = str(predictor.version)
    T, ID, TX = quote_ident(table), quote_ident(id_col), quote_ident(text_col)
    run = TableRun(db_path, table, id_col, text_col, version, False, lock_timeout, on_wait)
    out = {"model": version, "rows_scored": 0, "rows_unknown": 0, "rows_skipped": 0, "chunks": 0}
    page_sql = (f"SELECT {ID} AS id, {TX} AS text FROM {T} WHERE {_has_text(TX)} AND {ID} > ? AND NOT EXISTS "
                f"(SELECT 1 FROM {SHADOW_TABLE} s WHERE s.table_name = ? AND s.model = ? AND "
                f"s.id = CAST({T}.{ID} AS VARCHAR)) ORDER BY {ID} LIMIT {int(chunk_rows)}")
    with table_claim(db_path, table, lock_timeout, on_wait), Attached(db_path, timeout=lock_timeout,
                                                                      on_wait=on_wait) as run.attached:
        with run.connect() as con:
            cols = check_table(con, db_path, table, id_col, text_col, False)
            if cols[text_col] != "VARCHAR":
                raise InputError(f"shadow scoring reads VARCHAR text; column {text_col!r} is {cols[text_col]}",
                                 column=text_col)
            con.execute(SHADOW_DDL)
            first = con.execute(f"SELECT min({ID}) FROM {T}").fetchall()[0][0]
        last, first_page = first, True
        while last is not None:
            with run.connect() as con:
                if first_page:      # the smallest id itself is a candidate: page from below it
                    chunk = con.sql(page_sql.replace(f"{ID} > ?", f"{ID} >= ?"),
                                    params=[last, table, version]).to_arrow_table()
                else:
                    chunk = con.sql(page_sql, params=[last, table, version]).to_arrow_table()
            first_page = False
            if chunk.num_rows == 0:
                break
            scored = score_page(run, threshold, predictor, chunk)
            with run.connect() as con:
                _insert(con, table, version, scored.out)
            out["rows_scored"] += len(scored.written_scores)
            out["rows_unknown"] += scored.unknown
            out["rows_skipped"] += scored.skipped
            out["chunks"] += 1
            last = chunk.column("id")[-1].as_py()
    return out


def _insert(con, table: str, version: str, rows: pa.Table) -> None:
    """One chunk of shadow scores: ONE transaction."""
    con.register(_CHUNK, rows.select(["id", "score", "label"]))
    try:
        con.execute("BEGIN")
        con.execute(f"INSERT INTO {SHADOW_TABLE} (table_name, id, model, score, label, scored_at) "
                    f"SELECT ?, CAST(id AS VARCHAR), ?, score, label, now() FROM {_CHUNK} ON CONFLICT DO NOTHING",
                    [table, version])
        con.execute("COMMIT")
    finally:
        con.unregister(_CHUNK)


_LABEL_WORDS = {"1": 1, "pos": 1, "positive": 1, "true": 1, "0": 0, "neg": 0, "negative": 0, "false": 0}


def _labels(values: list) -> np.ndarray:
    """0/1 labels from a label column (0/1, pos/neg, positive/negative, booleans); -1 where unknown."""
    out = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values):
        if v is None:
            continue
        out[i] = _LABEL_WORDS.get(str(v).strip().lower() if not isinstance(v, bool) else str(v).lower(), -1)
    return out


def compare_models(db_path: str | Path, table: str, a: PredictorLike, b: PredictorLike, *, id_col: str = "review_id",
                   text_col: str = "text", label_col: str | None = None, limit: int | None = None,
                   threshold: float = 0.5, top: int = 10, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> dict:
    """Score ``table``'s texts with models ``a`` and ``b`` (nothing is written) and compare them (see the module
    docstring). -> {models, table, rows, agreement, accuracy_a, accuracy_b, labelled, disagreements: [...]}."""
    check_arguments(db_path, table, id_col, text_col, threshold)
    T, ID, TX = quote_ident(table), quote_ident(id_col), quote_ident(text_col)
    with connection(db_path, read_only=True, timeout=lock_timeout) as con:
        cols = check_table(con, Path(db_path), table, id_col, text_col, False)
        if label_col is not None and label_col not in cols:
            raise InputError(f"label column {label_col!r} not in table {table!r} (columns: {', '.join(cols)})",
                             column=label_col)
        lab = f", {quote_ident(label_col)} AS label" if label_col else ""
        con.complete()          # check_table's last query, read only in part (DuckDB 2.0 wants it finished)
        rows = con.sql(f"SELECT {ID} AS id, {TX} AS text{lab} FROM {T} WHERE {_has_text(TX)} ORDER BY {ID}"
                       + (f" LIMIT {int(limit)}" if limit else "")).to_arrow_table()
    pa_, pb_ = (predict_chunk_with_coverage(m, rows.column("text")) for m in (a, b))
    both = ~np.isnan(pa_.scores) & ~np.isnan(pb_.scores) & ~pa_.unknown & ~pb_.unknown
    la, lb = pa_.scores >= threshold, pb_.scores >= threshold
    report = {"table": table, "models": [str(a.version), str(b.version)], "rows": rows.num_rows,
              "rows_both_scored": int(both.sum()),
              "agreement": float((la == lb)[both].mean()) if both.any() else None,
              "labelled": 0, "accuracy_a": None, "accuracy_b": None}
    if label_col:
        y = _labels(rows.column("label").to_pylist())
        known = both & (y >= 0)
        report["labelled"] = int(known.sum())
        if known.any():
            report["accuracy_a"] = float((la == (y == 1))[known].mean())
            report["accuracy_b"] = float((lb == (y == 1))[known].mean())
    gap = np.where(both, np.abs(pa_.scores - pb_.scores), -1.0)
    order = np.argsort(-gap)[:top]
    texts, ids = rows.column("text"), rows.column("id")
    report["disagreements"] = [{"id": ids[int(i)].as_py(), "score_a": round(float(pa_.scores[i]), 4),
                                "score_b": round(float(pb_.scores[i]), 4), "text": texts[int(i)].as_py()[:120]}
                               for i in order if gap[i] >= 0]
    return report
