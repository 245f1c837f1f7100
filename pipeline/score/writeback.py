"""Score a DuckDB table with a sentiment model and write the result back, incrementally and safely.

Columns written (added if missing, never any other column or row touched)::

    sentiment_score DOUBLE       P(positive), 0..1
    sentiment_label VARCHAR      'positive' if score >= threshold else 'negative'
    sentiment_model VARCHAR      the model version that produced the score
    scored_at       TIMESTAMPTZ  when the chunk holding the row was committed

How a run works (and why):

* **Incremental.** Candidates are rows with text whose score is NULL or was produced by another
  model version (``--rescore``: every row with text). A second run with the same model finds 0.
* **NULL/empty text** (NULL, '' or only spaces, tabs and newlines) is never sent to the model: the row keeps a
  NULL score, is counted as ``rows_skipped`` in the report, and is not a candidate next time
  either (so it is not retried forever). Fill in the text and the next run scores it.
  A non-empty text with nothing to score (no letter or digit outside HTML tags, e.g. ``"!!!"`` or
  ``"<br />"``) may come back NaN from the predictor: it is also left NULL and counted as skipped;
  being stale, it is tried again by the next run.
* **A bad score fails the run, it is never stored or skipped.** NaN for a text that has letters or
  digits, a score outside 0..1, +-inf, or the wrong number of scores raise
  :class:`ModelOutputError` (a broken or tampered model), naming the row. Nothing of that chunk
  is written; chunks committed before stay (they were checked the same way). No clipping.
* **Input types are checked before anything is written.** The text column must be VARCHAR (any
  collation); a BLOB column is decoded as UTF-8 only with ``blob_as_utf8=True``
  (``--blob-as-utf8``), and a BLOB that is not valid UTF-8 is refused naming the id of its first bad
  row (no silent replacement characters). Anything else (INTEGER star ratings, DOUBLE, BOOLEAN,
  DATE, VARCHAR[], STRUCT, MAP, JSON documents, ENUM categories, ...) is an :class:`InputError`
  naming the table, the column and its type, and how to make a VARCHAR copy. The id column must be
  of a type that pages (``ORDER BY id``, ``id > last``) and joins back exactly after a trip through
  Arrow and Python: integers, DECIMAL, FLOAT/DOUBLE (no NaN id), VARCHAR, UUID, BLOB, DATE, TIME,
  TIMESTAMP (seconds to microseconds, TIMESTAMPTZ) with values Python can hold (finite, years
  1..9999). Refused: BOOLEAN, INTERVAL ('1 month' = '30 days'), BIT, TIMESTAMP_NS (Python
  parameters carry microseconds only, so paging would stall), TIME WITH TIME ZONE, JSON, ENUM and
  nested types. A refused input leaves the database file exactly as it was (no column added, no
  audit row).
* **One scoring run per table at a time.** A run first takes the table's *claim*, an OS file lock
  on ``<db>.score-<sha1(table)[:16]>.lock`` beside the database file, and holds it to the end. A
  second run of the same table says that it waits, waits up to ``lock_timeout`` (then
  :class:`pipeline.core.duck.LockTimeout`, a temporary failure), and then scores only what is left
  (usually nothing), so every row is scored by one run and ``sentiment_runs`` adds up. The OS drops
  the lock when its process dies, even by ``kill -9``: the claim never stays stuck. The lock file
  itself is left in place (empty; harmless).
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
  (:func:`pipeline.core.duck.connect`).
* **Memory is flat**: one chunk of (id, text) at a time plus a fixed-size score histogram.
* Every run is recorded in the audit table ``sentiment_runs`` (``running`` at start, then
  ``completed`` or ``failed`` with the error). A run killed by a signal stays ``running`` until
  the next run on the same host notices that its process is gone and marks it ``failed``.

The predictor is anything with ``.version: str`` and
``.predict_proba(list[str | None]) -> np.ndarray`` (float64 within 0..1; NaN only for a text with
nothing to score), e.g.
:class:`pipeline.train.predictor.Predictor`. Texts are passed through whole: truncating to the
model's max length (head/tail as it was trained) is the predictor's job.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from filelock import FileLock
from filelock import Timeout as FileLockTimeout

from pipeline.core.duck import (DEFAULT_LOCK_TIMEOUT, LockTimeout, connection, is_unique_column, list_columns,
                           quote_ident, require_columns, require_table)
from pipeline.core.errors import InputError, NotFoundError, ReviewflowError

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
_HTML_TAG = re.compile(r"<[^<>]*>")
_WORD = re.compile(r"[^\W_]")          # a Unicode letter or digit

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
    rows_skipped: int = 0        # NULL/empty text, plus text with nothing to score (left NULL)
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


class ModelOutputError(ReviewflowError):
    """The model returned something that is not a score: NaN for real text, a value outside 0..1,
    +-inf, or the wrong number of scores. The model is broken (corrupt or tampered weights?)."""


_WHITESPACE_SQL = "' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)"   # trim() alone: spaces only


def _has_text(expr: str) -> str:
    """SQL: ``expr`` (a VARCHAR expression) holds more than ASCII whitespace (spaces, tabs, newlines)."""
    return f"({expr} IS NOT NULL AND length(trim({expr}, {_WHITESPACE_SQL})) > 0)"


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


# --------------------------------------------------------------------------- input types


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


def _check_id_column(con, table: str, column: str, typ: str) -> None:
    """Refuse id types and values that do not survive keyset paging + the UPDATE join exactly."""
    if typ not in _PLAIN_ID_TYPES and not typ.startswith("DECIMAL("):
        raise InputError(
            f"id column {column!r} of table {table!r} has type {typ}, which cannot serve as a row id for "
            f"paging and writing scores back (ids must be integers, DECIMAL, FLOAT/DOUBLE, VARCHAR, UUID, "
            f"BLOB, DATE, TIME or TIMESTAMP up to microseconds). Pick another --id-col, or add one: "
            f"ALTER TABLE {quote_ident(table)} ADD COLUMN row_id BIGINT; UPDATE {quote_ident(table)} "
            f"SET row_id = rowid; then --id-col row_id", column=column)
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


def _refuse_invalid_utf8(con, table: str, id_col: str, text_col: str, where: str = "TRUE",
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


# --------------------------------------------------------------------------- scores


def _has_scorable_content(text: str | None) -> bool:
    """A letter or digit outside HTML tags: a text a model can score (NaN for it is a broken model)."""
    return text is not None and _WORD.search(_HTML_TAG.sub(" ", text)) is not None


def predict_sorted(predictor: PredictorLike, texts: pa.Array | pa.ChunkedArray, batch_size: int) -> np.ndarray:
    """Scores for ``texts`` in their order, inferred in batches of similar length (less padding).

    Raises :class:`ModelOutputError` when a batch's answer is not one number per text."""
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
            answer = predictor.predict_proba(batch)
            try:
                probs = np.asarray(answer, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ModelOutputError(f"model {predictor.version} returned something that is not numbers "
                                       f"({type(answer).__name__}): {exc}") from None
            if probs.shape != (len(batch),):
                raise ModelOutputError(f"model {predictor.version} returned {probs.shape} scores for "
                                       f"{len(batch)} texts; expected one score per text")
            out[idx] = probs
    return out


def check_scores(scores: np.ndarray, chunk: pa.Table, version: str, table: str) -> np.ndarray:
    """-> mask of the rows to write. Raises :class:`ModelOutputError` for a score outside 0..1
    (+-inf included) or a NaN for a text that has something to score, naming the first such id."""
    def fail(i: int, what: str) -> None:
        rid = chunk.column("id")[int(i)].as_py()
        raise ModelOutputError(f"model {version} returned {what} for id {rid!r} of table {table!r}; a score "
                               f"must be a probability within 0..1. The model is broken (corrupt or tampered "
                               f"weights?): nothing of this chunk was written. Check the model (or pick "
                               f"another --model) and run again")

    nan = np.isnan(scores)
    out_of_range = ~nan & ~((scores >= 0.0) & (scores <= 1.0))
    if out_of_range.any():
        i = int(np.flatnonzero(out_of_range)[0])
        fail(i, f"the score {float(scores[i])!r}")
    nan_rows = np.flatnonzero(nan)
    if len(nan_rows):
        texts = chunk.column("text").take(pa.array(nan_rows)).to_pylist()
        for i, text in zip(nan_rows, texts):
            if _has_scorable_content(text):
                fail(i, f"NaN for a text with words in it ({text[:60]!r})")
    return ~nan


# --------------------------------------------------------------------------- the table claim


def claim_path(db_path: str | os.PathLike, table: str) -> Path:
    """The lock file that makes one scoring run per (database file, table) at a time."""
    digest = hashlib.sha1(table.encode("utf-8")).hexdigest()[:16]
    return Path(f"{db_path}.score-{digest}.lock")


@contextlib.contextmanager
def table_claim(db_path: Path, table: str, timeout: float, on_wait: Callable[[str], None] | None) -> Iterator[None]:
    """Hold the table's claim (an OS file lock, released by the OS if this process dies)."""
    path = claim_path(db_path, table)
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except FileLockTimeout:
        if on_wait is not None:
            on_wait(f"waiting for the claim on table {table!r}: another scoring run of it in {db_path} is "
                    f"in progress (lock {path.name}; giving up after {timeout:.0f} s)")
        try:
            lock.acquire(timeout=timeout)
        except FileLockTimeout:
            raise LockTimeout(f"gave up after {timeout:.0f} s waiting for the claim on table {table!r}: another "
                              f"scoring run of it in {db_path} kept it (lock {path}). Retry later or raise "
                              f"the wait limit (--lock-timeout)") from None
    try:
        yield
    finally:
        lock.release()


# --------------------------------------------------------------------------- main entry point


def score_table(db_path: str | os.PathLike, table: str, predictor: PredictorLike, *,
                id_col: str = "review_id", text_col: str = "text", rescore: bool = False,
                threshold: float = 0.5, batch_size: int = 256, chunk_rows: int = 4096,
                progress: ProgressFn | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                on_wait: Callable[[str], None] | None = None,
                after_chunk: Callable[[ScoreReport], None] | None = None,
                blob_as_utf8: bool = False) -> ScoreReport:
    """Score ``table`` in the DuckDB file ``db_path`` and write the sentiment columns back.

    Returns a :class:`ScoreReport`. Raises :class:`NotFoundError` for a missing table/column
    (listing what exists), :class:`InputError` for a column of the wrong type, NULL or duplicate
    ids or clashing columns (nothing written), :class:`ModelOutputError` when the model returns
    something that is not a score (the run is recorded as failed),
    :class:`pipeline.core.duck.LockTimeout` when another process keeps the file locked, or another
    run of this table keeps its claim, too long. ``progress(done, total)`` is called after every
    committed chunk; ``blob_as_utf8`` lets a BLOB text column be decoded as UTF-8.
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
    quote_ident(table)                 # an invalid name is refused before its claim file is made
    with table_claim(db_path, table, lock_timeout, on_wait):
        return _score_claimed(db_path, table, predictor, version, id_col=id_col, text_col=text_col,
                              rescore=rescore, threshold=threshold, batch_size=batch_size, chunk_rows=chunk_rows,
                              progress=progress, lock_timeout=lock_timeout, on_wait=on_wait,
                              after_chunk=after_chunk, blob_as_utf8=blob_as_utf8)


def _score_claimed(db_path: Path, table: str, predictor: PredictorLike, version: str, *, id_col: str,
                   text_col: str, rescore: bool, threshold: float, batch_size: int, chunk_rows: int,
                   progress: ProgressFn | None, lock_timeout: float, on_wait, after_chunk,
                   blob_as_utf8: bool) -> ScoreReport:
    """:func:`score_table` once this process holds the table's claim."""
    T, ID, TX = quote_ident(table), quote_ident(id_col), quote_ident(text_col)
    conn = lambda: connection(db_path, timeout=lock_timeout, on_wait=on_wait)  # noqa: E731

    report = ScoreReport(run_id=uuid.uuid4().hex[:16], table=table, db_path=str(db_path), model=version,
                         threshold=threshold)
    t0 = time.perf_counter()

    # ---- set up: validate (nothing written if refused), add columns, audit row, count (one transaction)
    with conn() as con:
        require_table(con, table, db_path)
        cols = require_columns(con, table, [id_col, text_col])
        for name, typ in SENTIMENT_COLUMNS.items():
            if name in cols and cols[name] != typ:
                raise InputError(f"table {table!r} already has a column {name!r} of type {cols[name]}; "
                                 f"scoring writes {typ} there", column=name)
        _check_text_column(table, text_col, cols[text_col], cols, blob_as_utf8)
        _check_id_column(con, table, id_col, cols[id_col])
        is_blob = cols[text_col] == "BLOB"
        null_ids = con.execute(f"SELECT count(*) FROM {T} WHERE {ID} IS NULL").fetchone()[0]
        if null_ids:
            raise InputError(f"table {table!r} has {null_ids} row(s) with a NULL id; every row needs a "
                             f"non-NULL, unique id to be scored", column=id_col)
        if not is_unique_column(con, table, id_col):
            dups = con.execute(f"SELECT count(*) - count(DISTINCT {ID}) FROM {T}").fetchone()[0]
            if dups:
                raise InputError(f"table {table!r} has {dups} duplicate id(s); ids must be unique to write "
                                 f"scores back (pick another --id-col)", column=id_col)
        if is_blob:
            _refuse_invalid_utf8(con, table, id_col, text_col)
        # Candidates = stale rows with text. Paging is done on `stale` alone (sentiment columns + id:
        # cheap per chunk, never reads the text column); the text test is applied only to the page's
        # id range. Rows without text are stepped over (counted once as skipped at the start).
        text = f"decode({TX})" if is_blob else TX
        stale, stale_takes_model = _stale_sql(rescore)
        cand = f"({_has_text(text)} AND {stale})"
        cand_params = [version] if stale_takes_model else []
        con.execute("BEGIN")
        for name, typ in SENTIMENT_COLUMNS.items():
            if name not in cols:
                con.execute(f"ALTER TABLE {T} ADD COLUMN {quote_ident(name)} {typ}")
        con.execute(RUNS_DDL)
        _mark_dead_runs(con)
        total, todo, no_text = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE {cand}), count(*) FILTER (WHERE NOT {_has_text(text)}) FROM {T}",
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
                page = f"TRUE{after} AND {ID} <= ?"
                if is_blob:        # a BLOB written since the start may not be UTF-8: name it
                    _refuse_invalid_utf8(con, table, id_col, text_col, page, after_p + [hi])
                reader = con.sql(
                    f"SELECT {ID} AS id, {text} AS text FROM {T} WHERE {cand} AND {page} ORDER BY {ID}",
                    params=cand_params + after_p + [hi],
                ).to_arrow_reader(batch_size=max(batch_size, 1024))
                chunk = pa.Table.from_batches(list(reader), schema=reader.schema)
            if chunk.num_rows == 0:          # a page of rows without text only: step over it
                last = hi
                continue
            # ---- infer (no lock held), then refuse anything that is not a score
            scores = predict_sorted(predictor, chunk.column("text"), batch_size)
            ok = check_scores(scores, chunk, version, table)
            s = scores[ok]
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
        reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:2000]     # one line
        with contextlib.suppress(Exception):
            with conn() as con:
                con.execute(f"UPDATE {RUNS_TABLE} SET status = 'failed', finished_at = now(), error = ?, "
                            f"rows_scored = ?, rows_skipped = ? WHERE run_id = ?",
                            [reason, report.rows_scored, report.rows_skipped, report.run_id])
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
    from pipeline.core.config import validate_name

    validate_name(dataset, "dataset name")
    return f"{dataset}_{validate_name(split, 'split')}_scored" if split else f"{dataset}_scored"


def sync_dataset_table(wh, dataset: str, db_path: str | os.PathLike | None = None, *, split: str | None = None,
                       lock_timeout: float = DEFAULT_LOCK_TIMEOUT, on_wait=None) -> tuple[str, int]:
    """Create ``<dataset>[_<split>]_scored`` (lake columns + sentiment columns, PRIMARY KEY review_id) if
    missing and append lake rows (of ``split`` only, when given) whose review_id it does not hold yet, in one
    transaction; scores already written stay. -> (table, rows added)."""
    import pyarrow.dataset as pads

    from pipeline.ingest.lake import open_dataset
    from pipeline.core.schema import REVIEW_SCHEMA

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
