"""Score a DuckDB table with a sentiment model and write the result back, incrementally and safely.

Columns written (added if missing, never any other column or row touched)::

    sentiment_score DOUBLE       P(positive), 0..1
    sentiment_label VARCHAR      'positive' if score >= threshold else 'negative'
    sentiment_model VARCHAR      the model version that produced the score
    scored_at       TIMESTAMPTZ  when the chunk holding the row was committed

How a run works (and why):

* **Incremental.** Candidates are rows with text whose score is NULL or was produced by another
  model version (``--rescore``: every row with text). A second run with the same model finds 0.
* **NULL/empty text** (NULL, '' or only whitespace) is never sent to the model: the row keeps a
  NULL score, is counted as ``rows_skipped`` in the report, and is not a candidate next time
  either (so it is not retried forever). Fill in the text and the next run scores it.
  A non-empty text the model still returns NaN for (e.g. nothing but punctuation) is also left
  NULL and counted as skipped; being stale, it is tried again by the next run.
* ``--rescore`` scores every row with text again; an interrupted rescore, rerun, starts over.
* **Chunks, one transaction each.** Candidates are read in keyset-paginated chunks
  (``ORDER BY id`` with ``id > last``) as Arrow record batches, sorted by length for batched
  inference, and written back with one ``UPDATE ... FROM chunk`` joined on the id, in one
  transaction together with the audit row's progress. ``kill -9`` at any moment leaves whole
  chunks only; the next run finds just what is left.
* **The lock is held per chunk only.** DuckDB lets no other process open a file (not even
  read-only) while a writer has it open, so a run opens the file to read a chunk, closes it,
  runs the model, reopens it to write and commit, and closes it again. Readers
  (``reviewflow sql``) get in between; both sides wait for each other with backoff
  (:func:`pipeline.duck.connect`).
* **Memory is flat**: one chunk of (id, text) at a time plus a fixed-size score histogram.
* Every run is recorded in the audit table ``sentiment_runs`` (``running`` at start, then
  ``completed`` or ``failed`` with the error). A run killed by a signal stays ``running`` until
  the next run on the same host notices that its process is gone and marks it ``failed``.

The predictor is anything with ``.version: str`` and
``.predict_proba(list[str | None]) -> np.ndarray`` (float64, NaN for None/empty), e.g.
:class:`pipeline.inference.Predictor`. Texts are passed through whole: truncating to the
model's max length (head/tail as it was trained) is the predictor's job.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.duck import (DEFAULT_LOCK_TIMEOUT, connection, is_unique_column, list_columns,
                           quote_ident, require_columns, require_table)
from pipeline.errors import InputError, NotFoundError

SENTIMENT_COLUMNS: dict[str, str] = {
    "sentiment_score": "DOUBLE",
    "sentiment_label": "VARCHAR",
    "sentiment_model": "VARCHAR",
    "scored_at": "TIMESTAMP WITH TIME ZONE",
}
RUNS_TABLE = "sentiment_runs"
RUNS_DDL = f"""
CREATE TABLE IF NOT EXISTS {RUNS_TABLE} (
    run_id VARCHAR PRIMARY KEY,
    table_name VARCHAR NOT NULL,
    model VARCHAR NOT NULL,
    rows_scored BIGINT NOT NULL DEFAULT 0,
    rows_skipped BIGINT NOT NULL DEFAULT 0,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    status VARCHAR NOT NULL,      -- running | completed | failed
    error VARCHAR,
    host VARCHAR,
    pid INTEGER
)"""
_CHUNK_VIEW = "__reviewflow_score_chunk"
_HIST_BINS = 1000

ProgressFn = Callable[[int, int], None]   # (rows done, rows to do)


class PredictorLike(Protocol):
    version: str

    def predict_proba(self, texts: Sequence[str | None]) -> np.ndarray: ...


@dataclass
class ScoreReport:
    run_id: str
    table: str
    db_path: str
    model: str
    rows_total: int = 0          # rows in the table when the run started
    rows_to_score: int = 0       # candidates when the run started
    rows_scored: int = 0
    rows_skipped: int = 0        # NULL/empty text (left NULL), plus any the model returned NaN for
    rows_up_to_date: int = 0     # already scored by this model (not touched)
    label_counts: dict = field(default_factory=lambda: {"positive": 0, "negative": 0})
    deciles: list = field(default_factory=list)   # score at 10%, 20%, ... 90% of rows scored this run
    histogram: list = field(default_factory=list)  # 20 bins over [0, 1] of the scores written this run
    chunks: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    status: str = "running"
    threshold: float = 0.5

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def _has_text(col: str) -> str:
    return f"({col} IS NOT NULL AND length(trim(CAST({col} AS VARCHAR))) > 0)"


def _stale_sql(rescore: bool) -> tuple[str, bool]:
    """SQL predicate on the sentiment columns only (cheap: never reads the text); second value:
    whether it takes the model version parameter."""
    if rescore:
        return "TRUE", False
    return "(sentiment_score IS NULL OR sentiment_model IS DISTINCT FROM ?)", True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mark_dead_runs(con) -> None:
    """Runs left 'running' by a process on this host that no longer exists -> 'failed'."""
    host = socket.gethostname()
    rows = con.execute(f"SELECT run_id, pid FROM {RUNS_TABLE} WHERE status = 'running' AND host = ?", [host]).fetchall()
    for run_id, pid in rows:
        if pid is not None and pid != os.getpid() and not _pid_alive(pid):
            con.execute(
                f"UPDATE {RUNS_TABLE} SET status = 'failed', finished_at = now(), "
                f"error = ? WHERE run_id = ?",
                [f"interrupted: process {pid} on {host} ended without finishing (killed?)", run_id],
            )


def _deciles(hist: np.ndarray) -> list[float]:
    total = int(hist.sum())
    if total == 0:
        return []
    cum = np.cumsum(hist)
    edges = np.linspace(0.0, 1.0, _HIST_BINS + 1)
    out = []
    for q in range(1, 10):
        i = int(np.searchsorted(cum, q * total / 10.0))
        out.append(round(float(edges[min(i + 1, _HIST_BINS)]), 3))
    return out


def _inference_context():
    torch = sys.modules.get("torch")
    return torch.inference_mode() if torch is not None else contextlib.nullcontext()


def predict_sorted(predictor: PredictorLike, texts: pa.Array | pa.ChunkedArray, batch_size: int) -> np.ndarray:
    """Scores for ``texts`` in their order, inferred in batches of similar length (less padding)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    n = len(texts)
    out = np.full(n, np.nan, dtype=np.float64)
    if n == 0:
        return out
    lengths = pc.fill_null(pc.binary_length(texts.cast(pa.string())), 0).to_numpy(zero_copy_only=False)
    order = np.argsort(lengths, kind="stable")
    with _inference_context():
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            batch = texts.take(pa.array(idx)).to_pylist()
            probs = np.asarray(predictor.predict_proba(batch), dtype=np.float64)
            if probs.shape != (len(batch),):
                raise ValueError(f"predictor returned shape {probs.shape} for {len(batch)} texts")
            out[idx] = probs
    return out


# --------------------------------------------------------------------------- main entry point


def score_table(db_path: str | os.PathLike, table: str, predictor: PredictorLike, *,
                id_col: str = "review_id", text_col: str = "text", rescore: bool = False,
                threshold: float = 0.5, batch_size: int = 256, chunk_rows: int = 4096,
                progress: ProgressFn | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                on_wait: Callable[[str], None] | None = None,
                after_chunk: Callable[[ScoreReport], None] | None = None) -> ScoreReport:
    """Score ``table`` in the DuckDB file ``db_path`` and write the sentiment columns back.

    Returns a :class:`ScoreReport`. Raises :class:`NotFoundError` for a missing table/column
    (listing what exists), :class:`InputError` for NULL or duplicate ids or clashing columns,
    :class:`pipeline.duck.LockTimeout` when another process keeps the file locked too long.
    ``progress(done, total)`` is called after every committed chunk.
    """
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be within 0..1, got {threshold}")
    if batch_size < 1 or chunk_rows < 1:
        raise InputError("batch_size and chunk_rows must be >= 1")
    if table == RUNS_TABLE:
        raise InputError(f"{RUNS_TABLE!r} is the audit table of scoring runs; it cannot be scored")
    for c in (id_col, text_col):
        if c in SENTIMENT_COLUMNS:
            raise InputError(f"{c!r} is one of the sentiment columns this command writes; pick another column")
    version = str(predictor.version)
    db_path = Path(db_path)
    if not db_path.exists():
        raise NotFoundError(f"DuckDB database {db_path} does not exist")
    T, ID, TX = quote_ident(table), quote_ident(id_col), quote_ident(text_col)
    # Candidates = stale rows with text. Paging is done on `stale` alone (sentiment columns + id:
    # cheap per chunk, never reads the text column); the text test is applied only to the page's
    # id range. Rows without text are stepped over (counted once as skipped at the start).
    stale, stale_takes_model = _stale_sql(rescore)
    cand = f"({_has_text(TX)} AND {stale})"
    cand_params = [version] if stale_takes_model else []
    conn = lambda: connection(db_path, timeout=lock_timeout, on_wait=on_wait)  # noqa: E731

    report = ScoreReport(run_id=uuid.uuid4().hex[:16], table=table, db_path=str(db_path), model=version,
                         threshold=threshold)
    t0 = time.perf_counter()

    # ---- set up: validate, add columns, audit row, count (one short transaction)
    with conn() as con:
        require_table(con, table, db_path)
        cols = require_columns(con, table, [id_col, text_col])
        for name, typ in SENTIMENT_COLUMNS.items():
            if name in cols and cols[name] != typ:
                raise InputError(f"table {table!r} already has a column {name!r} of type {cols[name]}; "
                                 f"scoring writes {typ} there", column=name)
        null_ids = con.execute(f"SELECT count(*) FROM {T} WHERE {ID} IS NULL").fetchone()[0]
        if null_ids:
            raise InputError(f"table {table!r} has {null_ids} row(s) with a NULL id; every row needs a "
                             f"non-NULL, unique id to be scored", column=id_col)
        if not is_unique_column(con, table, id_col):
            dups = con.execute(f"SELECT count(*) - count(DISTINCT {ID}) FROM {T}").fetchone()[0]
            if dups:
                raise InputError(f"table {table!r} has {dups} duplicate id(s); ids must be unique to write "
                                 f"scores back (pick another --id-col)", column=id_col)
        con.execute("BEGIN")
        for name, typ in SENTIMENT_COLUMNS.items():
            if name not in cols:
                con.execute(f"ALTER TABLE {T} ADD COLUMN {quote_ident(name)} {typ}")
        con.execute(RUNS_DDL)
        _mark_dead_runs(con)
        total, todo, no_text = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE {cand}), count(*) FILTER (WHERE NOT {_has_text(TX)}) FROM {T}",
            cand_params,
        ).fetchone()
        con.execute(
            f"INSERT INTO {RUNS_TABLE} (run_id, table_name, model, rows_scored, rows_skipped, started_at, status, host, pid) "
            f"VALUES (?, ?, ?, 0, ?, now(), 'running', ?, ?)",
            [report.run_id, table, version, no_text, socket.gethostname(), os.getpid()],
        )
        con.execute("COMMIT")
    report.rows_total, report.rows_to_score, report.rows_skipped = int(total), int(todo), int(no_text)
    report.rows_up_to_date = report.rows_total - report.rows_to_score - report.rows_skipped
    if progress is not None:
        progress(0, report.rows_to_score)

    hist = np.zeros(_HIST_BINS, dtype=np.int64)
    last = None
    processed = 0
    try:
        while True:
            # ---- read one chunk (keyset pagination: cheap to resume after reopening)
            after = f" AND {ID} > ?" if last is not None else ""
            after_p = [last] if last is not None else []
            with conn() as con:
                ids = con.sql(f"SELECT {ID} FROM {T} WHERE {stale}{after} ORDER BY {ID} LIMIT {int(chunk_rows)}",
                              params=cand_params + after_p).to_arrow_table()
                if ids.num_rows == 0:
                    break
                hi = ids.column(0)[-1].as_py()
                reader = con.sql(
                    f"SELECT {ID} AS id, CAST({TX} AS VARCHAR) AS text FROM {T} "
                    f"WHERE {cand}{after} AND {ID} <= ? ORDER BY {ID}",
                    params=cand_params + after_p + [hi],
                ).to_arrow_reader(batch_size=max(batch_size, 1024))
                chunk = pa.Table.from_batches(list(reader), schema=reader.schema)
            if chunk.num_rows == 0:          # a page of rows without text only: step over it
                last = hi
                continue
            # ---- infer (no lock held)
            scores = predict_sorted(predictor, chunk.column("text"), batch_size)
            ok = ~np.isnan(scores)
            s = np.clip(scores[ok], 0.0, 1.0)
            labels = np.where(s >= threshold, "positive", "negative")
            out = pa.table({
                "id": chunk.column("id").filter(pa.array(ok)),
                "score": pa.array(s, pa.float64()),
                "label": pa.array(labels.tolist(), pa.string()),
            })
            n_pos = int((s >= threshold).sum())
            # ---- write the chunk back: ONE transaction, together with the audit progress
            with conn() as con:
                con.register(_CHUNK_VIEW, out)
                con.execute("BEGIN")
                con.execute(
                    f"UPDATE {T} SET sentiment_score = c.score, sentiment_label = c.label, "
                    f"sentiment_model = ?, scored_at = now() FROM {_CHUNK_VIEW} AS c WHERE {T}.{ID} = c.id",
                    [version],
                )
                con.execute(f"UPDATE {RUNS_TABLE} SET rows_scored = ?, rows_skipped = ? WHERE run_id = ?",
                            [report.rows_scored + len(s), report.rows_skipped + int((~ok).sum()), report.run_id])
                con.execute("COMMIT")
                con.unregister(_CHUNK_VIEW)
            last = hi
            report.rows_scored += len(s)
            report.rows_skipped += int((~ok).sum())
            report.label_counts["positive"] += n_pos
            report.label_counts["negative"] += len(s) - n_pos
            hist += np.histogram(s, bins=_HIST_BINS, range=(0.0, 1.0))[0]
            report.chunks += 1
            processed += chunk.num_rows
            if progress is not None:
                progress(min(processed, report.rows_to_score), report.rows_to_score)
            if after_chunk is not None:
                after_chunk(report)
    except BaseException as exc:
        report.status = "failed"
        report.seconds = time.perf_counter() - t0
        with contextlib.suppress(Exception):
            with conn() as con:
                con.execute(f"UPDATE {RUNS_TABLE} SET status = 'failed', finished_at = now(), error = ?, "
                            f"rows_scored = ?, rows_skipped = ? WHERE run_id = ?",
                            [f"{type(exc).__name__}: {exc}"[:2000], report.rows_scored, report.rows_skipped,
                             report.run_id])
        raise

    report.seconds = time.perf_counter() - t0
    report.rows_per_s = report.rows_scored / report.seconds if report.seconds > 0 else 0.0
    report.deciles = _deciles(hist)
    report.histogram = hist.reshape(20, -1).sum(axis=1).tolist()
    report.status = "completed"
    with conn() as con:
        con.execute(f"UPDATE {RUNS_TABLE} SET status = 'completed', finished_at = now(), rows_scored = ?, "
                    f"rows_skipped = ? WHERE run_id = ?", [report.rows_scored, report.rows_skipped, report.run_id])
    return report


# --------------------------------------------------------------------------- lake dataset -> <name>_scored

_ARROW_TO_DUCK = {pa.string(): "VARCHAR", pa.int8(): "TINYINT", pa.int16(): "SMALLINT", pa.int32(): "INTEGER",
                  pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN"}


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if t in _ARROW_TO_DUCK:
        return _ARROW_TO_DUCK[t]
    raise InputError(f"lake column type {t} has no DuckDB mapping")


def scored_table_name(dataset: str, split: str | None = None) -> str:
    """``<dataset>_scored``, or ``<dataset>_<split>_scored`` for one split of it."""
    from pipeline.config import validate_name

    validate_name(dataset, "dataset name")
    return f"{dataset}_{validate_name(split, 'split')}_scored" if split else f"{dataset}_scored"


def sync_dataset_table(wh, dataset: str, db_path: str | os.PathLike | None = None, *, split: str | None = None,
                       lock_timeout: float = DEFAULT_LOCK_TIMEOUT, on_wait=None) -> tuple[str, int]:
    """Create ``<dataset>[_<split>]_scored`` (lake columns + sentiment columns, PRIMARY KEY review_id) if
    missing and append lake rows (of ``split`` only, when given) whose review_id it does not hold yet, in one
    transaction; scores already written stay. -> (table, rows added)."""
    import pyarrow.dataset as pads

    from pipeline.lake import open_dataset
    from pipeline.schema import REVIEW_SCHEMA

    lake = open_dataset(wh, dataset)            # NotFoundError with known datasets if missing
    if split is not None:
        lake = lake.filter(pads.field("split") == split)
    db_path = Path(db_path) if db_path is not None else wh.duckdb_path
    table = scored_table_name(dataset, split)
    T = quote_ident(table)
    names = [f.name for f in REVIEW_SCHEMA]
    col_defs = [f"{quote_ident(f.name)} {_duck_type(f.type)}" + (" PRIMARY KEY" if f.name == "review_id" else "")
                for f in REVIEW_SCHEMA]
    col_defs += [f"{quote_ident(n)} {t}" for n, t in SENTIMENT_COLUMNS.items()]
    cols_sql = ", ".join(quote_ident(n) for n in names)
    view = "__reviewflow_lake"
    with connection(db_path, timeout=lock_timeout, on_wait=on_wait) as con:
        con.execute("BEGIN")
        con.execute(f"CREATE TABLE IF NOT EXISTS {T} ({', '.join(col_defs)})")
        missing = [n for n in names if n not in list_columns(con, table)]
        if missing:
            raise InputError(f"table {table!r} exists but lacks lake column(s) {missing}")
        con.register(view, lake)
        before = con.execute(f"SELECT count(*) FROM {T}").fetchone()[0]
        con.execute(
            f"INSERT OR IGNORE INTO {T} ({cols_sql}) SELECT {cols_sql} FROM {view} AS s "
            f"WHERE NOT EXISTS (SELECT 1 FROM {T} AS d WHERE d.review_id = s.review_id)"
        )
        after = con.execute(f"SELECT count(*) FROM {T}").fetchone()[0]
        con.execute("COMMIT")
        con.unregister(view)
    return table, int(after - before)


def score_dataset(wh, dataset: str, predictor: PredictorLike, *, db_path: str | os.PathLike | None = None,
                  split: str | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT, on_wait=None,
                  **kwargs) -> ScoreReport:
    """Score lake dataset ``dataset`` (or one ``split`` of it) into warehouse table
    ``<dataset>[_<split>]_scored``: new lake rows are appended by review_id, rows already scored by this
    model are kept, the rest is scored."""
    db_path = Path(db_path) if db_path is not None else wh.duckdb_path
    table, _added = sync_dataset_table(wh, dataset, db_path, split=split, lock_timeout=lock_timeout,
                                       on_wait=on_wait)
    return score_table(db_path, table, predictor, id_col="review_id", text_col="text",
                       lock_timeout=lock_timeout, on_wait=on_wait, **kwargs)
