"""Score a DuckDB table with a sentiment model and write the result back, incrementally and safely.

Columns written (added if missing, never any other column or row touched)::

    sentiment_score    DOUBLE       P(positive), 0..1; NULL when the label is 'unknown'
    sentiment_label    VARCHAR      'positive' if score >= threshold else 'negative'; 'unknown' when the
                                    model cannot read the text (below its coverage rule)
    sentiment_model    VARCHAR      the model version that produced the score (or the 'unknown' label)
    scored_at          TIMESTAMPTZ  when the chunk holding the row was committed
    sentiment_coverage DOUBLE       share of the text's tokens the model knows, 0..1 (NULL when the
                                    predictor does not report coverage)

A table scored before ``sentiment_coverage`` existed gains the column on its next run; its scores stay
(rows already scored by the same model are up to date, with a NULL coverage; ``--rescore`` fills it).

How a run works (and why):

* **Incremental.** Candidates are rows with text whose score is NULL (unless this model labelled them
  ``'unknown'``) or was produced by another model version (``--rescore``: every row with text). A second
  run with the same model finds 0.
* **Never a confident guess on text the model cannot read.** A predictor with ``predict_with_coverage``
  (:class:`pipeline.serve.predictor.Predictor`) says which texts fall below its model's coverage rule
  (too few known tokens, :mod:`pipeline.model.coverage`): those rows get the label ``'unknown'``, a NULL
  score, their coverage and the model version, and are counted as ``rows_unknown`` (report and audit
  row). Being labelled by this model they are up to date: the same model does not retry them, a new
  model version does.
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
* **Input types are checked before anything is written** (:mod:`pipeline.score.inputs`): a text column
  that is not text, ids that cannot page or join back exactly, NULL or duplicate ids are refused, and
  a refused input leaves the database file exactly as it was (no column added, no audit row).
* **One scoring run per table at a time** (:mod:`pipeline.score.claim`). A run first takes the table's
  claim and holds it to the end. A second run of the same table says that it waits, waits up to
  ``lock_timeout`` (then :class:`pipeline.core.duck.LockTimeout`, a temporary failure), and then scores
  only what is left (usually nothing), so every row is scored by one run and ``sentiment_runs`` adds up.
* ``--rescore`` scores every row with text again; an interrupted rescore, rerun, starts over.
* **Chunks, one transaction each.** Candidates are read in keyset-paginated chunks
  (``ORDER BY id`` with ``id > last``) as Arrow record batches, scored with one predictor call
  (which sorts by length for batched inference), and written back with one ``UPDATE ... FROM chunk`` joined on the id, in one
  transaction together with the audit row's progress. ``kill -9`` at any moment leaves whole
  chunks only; the next run finds just what is left.
* **The lock is held per chunk only.** DuckDB lets no other process open a file (not even
  read-only) while a writer has it open, so a run opens the file for database work only: once per
  chunk, to commit the chunk scored before and read the next page, then closes it. The model scores
  chunk k on a worker thread meanwhile (it never needs the file), so reading, scoring and writing
  overlap while chunks are still committed one by one, in page order. Readers (``reviewflow sql``) get
  in between; both sides wait for each other with backoff (:func:`pipeline.core.duck.connect`).
* **Memory is flat**: one chunk of (id, text) at a time plus a fixed-size score histogram.
* Every run is recorded in the audit table ``sentiment_runs`` (:mod:`pipeline.score.audit`: ``running``
  at start, then ``completed`` or ``failed`` with the error), keyed on the Prefect flow-run id when
  there is one. A run killed by a signal stays ``running`` until a later run finds it dead (by the
  table's claim, or by its process) and marks it ``failed``.

The predictor is anything with ``.version: str`` and
``.predict_proba(list[str | None]) -> np.ndarray`` (float64 within 0..1; NaN only for a text with
nothing to score), e.g.
:class:`pipeline.serve.predictor.Predictor`. When it also has ``.predict_with_coverage(texts)`` (returning
``.score``, ``.coverage`` and ``.unknown`` arrays, see :class:`pipeline.serve.predictor.Prediction`), that is
called instead and coverage is written; without it every text with tokens is scored and coverage stays
NULL. Texts are passed through whole: truncating to the model's max length (head/tail as it was trained)
is the predictor's job.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import pyarrow as pa

from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT, connection, quote_ident
from pipeline.core.errors import InputError, NotFoundError, ReviewflowError
from pipeline.score import audit
from pipeline.score.attach import Attached
from pipeline.score.audit import RUNS_TABLE
from pipeline.score.claim import table_claim
from pipeline.model.profile import Profile
from pipeline.score.inputs import SENTIMENT_COLUMNS, check_schema, check_table, refuse_invalid_utf8
_CHUNK_VIEW = "__reviewflow_score_chunk"
HIST_BINS = 1000
_HTML_TAG = re.compile(r"<[^<>]*>")
_WORD = re.compile(r"[^\W_]")          # a Unicode letter or digit

ProgressFn = Callable[[int, int], None]   # (rows done, rows to do)

DEFAULT_CHUNK_ROWS = 16_384   # rows per committed chunk: n-gram models write back ~1.8x faster than at 4,096
_READ_ROWS = 1024             # rows per Arrow batch read from DuckDB (at least)


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
    rows_unknown: int = 0        # text the model cannot read (below its coverage rule): label 'unknown'
    rows_up_to_date: int = 0     # already scored by this model (not touched)
    label_counts: dict = field(default_factory=lambda: {"positive": 0, "negative": 0, "unknown": 0})
    deciles: list = field(default_factory=list)   # score at 10%, 20%, ... 90% of rows scored this run
    histogram: list = field(default_factory=list)  # 20 bins over [0, 1] of the scores written this run
    chunks: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    status: str = "running"
    threshold: float = 0.5
    coverage_rule: dict | None = None   # the model's {min_known, min_share}; None: predictor without coverage
    engine: dict | None = None          # partitioned runs: parts, workers, their peak RSS, export/merge timings
    profile: dict | None = None         # the rows written this run, profiled for drift (pipeline.score.drift)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- helpers


class ModelOutputError(ReviewflowError):
    """The model returned something that is not a score: NaN for real text, a value outside 0..1,
    +-inf, or the wrong number of scores. The model is broken (corrupt or tampered weights?)."""


_BLANK_RE = "'[ \\t\\n\\x0b\\x0c\\r]*'"   # RE2 pattern, as a SQL literal: only the six whitespace bytes, or nothing


def _has_text(expr: str) -> str:
    """SQL: ``expr`` (a VARCHAR expression) holds more than ASCII whitespace (spaces, tabs, newlines).

    The same test as ``length(trim(expr, ' ' || chr(9) || ... || chr(13))) > 0``, 30 times cheaper: a
    regular-expression full match stops at the first other character, where trim copied every text (1.8 s
    for 50,000 IMDb reviews, once at the start and again for every page)."""
    return f"({expr} IS NOT NULL AND NOT regexp_full_match({expr}, {_BLANK_RE}))"


_STALE_COLUMNS = ("sentiment_model", "sentiment_score", "sentiment_label")     # what _stale_sql reads


def _text_sql(text_col: str, is_blob: bool) -> str:
    """SQL: the text column as VARCHAR (a BLOB column decoded as UTF-8, checked valid before)."""
    return f"decode({quote_ident(text_col)})" if is_blob else quote_ident(text_col)


def _stale_sql(rescore: bool) -> tuple[str, bool]:
    """SQL predicate on the sentiment columns only (cheap: never reads the text); second value:
    whether it takes the model version parameter. A NULL score is stale unless this model labelled the
    row ``'unknown'`` (it cannot read it: retrying would give the same answer)."""
    if rescore:
        return "TRUE", False
    return ("(sentiment_model IS DISTINCT FROM ? OR "
            "(sentiment_score IS NULL AND sentiment_label IS DISTINCT FROM 'unknown'))"), True


def deciles(hist: np.ndarray) -> list[float]:
    total = int(hist.sum())
    if total == 0:
        return []
    cum = np.cumsum(hist)
    edges = np.linspace(0.0, 1.0, HIST_BINS + 1)
    out = []
    for q in range(1, 10):
        i = int(np.searchsorted(cum, q * total / 10.0))
        out.append(round(float(edges[min(i + 1, HIST_BINS)]), 3))
    return out


def _inference_context():
    torch = sys.modules.get("torch")
    return torch.inference_mode() if torch is not None else contextlib.nullcontext()


# --------------------------------------------------------------------------- scores


def _has_scorable_content(text: str | None) -> bool:
    """A letter or digit outside HTML tags: a text a model can score (NaN for it is a broken model)."""
    return text is not None and _WORD.search(_HTML_TAG.sub(" ", text)) is not None


def _texts_for(predictor, texts: pa.Array | pa.ChunkedArray):
    """The chunk's texts as the predictor takes them: the Arrow array itself when it says it reads Arrow
    (``accepts_arrow = True``, e.g. :class:`pipeline.serve.predictor.Predictor`: no Python string per
    row), else a list of str / None."""
    return texts if getattr(predictor, "accepts_arrow", False) is True else texts.to_pylist()


def predict_chunk(predictor: PredictorLike, texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Scores for ``texts`` in their order, from ONE ``predict_proba`` call: the predictor sorts by length
    and batches itself. (Sorting here as well bought nothing: on 4,096 IMDb reviews, one thread, the
    ``default`` model, a sort by length here plus batches of 256 took 5.5-5.9 s, one call 5.2 s.)

    Raises :class:`ModelOutputError` when the answer is not one number per text."""
    batch = _texts_for(predictor, texts)
    with _inference_context():
        answer = predictor.predict_proba(batch)
    try:
        probs = np.asarray(answer, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelOutputError(f"model {predictor.version} returned something that is not numbers "
                               f"({type(answer).__name__}): {exc}") from None
    if probs.shape != (len(batch),):
        raise ModelOutputError(f"model {predictor.version} returned {probs.shape} scores for "
                               f"{len(batch)} texts; expected one score per text")
    return probs


@dataclass
class ChunkPrediction:
    """One chunk's answer, per text: ``scores`` (NaN: nothing to score, or unknown), ``coverage`` (NaN:
    not reported) and ``unknown`` (the model cannot read the text: label 'unknown', no score)."""
    scores: np.ndarray
    coverage: np.ndarray
    unknown: np.ndarray
    tokens: np.ndarray | None = None      # tokens the model read per text (None: not reported)


def _as_array(values, n: int, version: str, what: str, dtype) -> np.ndarray:
    """``values`` as one ``dtype`` number per text, else a :class:`ModelOutputError`."""
    try:
        out = np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise ModelOutputError(f"model {version} returned {what} that are not numbers: {exc}") from None
    if out.shape != (n,):
        raise ModelOutputError(f"model {version} returned {out.shape} {what} for {n} texts; expected one per text")
    return out


def predict_chunk_with_coverage(predictor: PredictorLike, texts: pa.Array | pa.ChunkedArray) -> ChunkPrediction:
    """Scores, coverage and the 'unknown' mask for ``texts`` from ONE predictor call. A predictor without
    ``predict_with_coverage`` reads every text (coverage NaN, nothing unknown): :func:`predict_chunk`."""
    with_coverage = getattr(predictor, "predict_with_coverage", None)
    if with_coverage is None:
        scores = predict_chunk(predictor, texts)
        return ChunkPrediction(scores, np.full(len(scores), np.nan), np.zeros(len(scores), bool))
    batch = _texts_for(predictor, texts)
    with _inference_context():
        answer = with_coverage(batch)
    version, n = predictor.version, len(batch)
    coverage = _as_array(answer.coverage, n, version, "coverages", np.float64)
    bad = ~np.isnan(coverage) & ~((coverage >= 0.0) & (coverage <= 1.0))
    if bad.any():
        raise ModelOutputError(f"model {version} returned the coverage {float(coverage[bad][0])!r}; a coverage "
                               f"is a share within 0..1")
    tokens = getattr(answer, "tokens", None)
    return ChunkPrediction(_as_array(answer.score, n, version, "scores", np.float64), coverage,
                           _as_array(answer.unknown, n, version, "unknown flags", bool),
                           tokens=None if tokens is None else _as_array(tokens, n, version, "token counts", np.int64))


def check_scores(scores: np.ndarray, chunk: pa.Table, version: str, table: str,
                 unknown: np.ndarray | None = None) -> np.ndarray:
    """-> mask of the rows to write a score for. Raises :class:`ModelOutputError` for a score outside 0..1
    (+-inf included) or a NaN for a text that has something to score and is not ``unknown`` (a text the
    model declared it cannot read), naming the first such id."""
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
    nan_rows = np.flatnonzero(nan if unknown is None else nan & ~unknown)
    if len(nan_rows):
        texts = chunk.column("text").take(pa.array(nan_rows)).to_pylist()
        for i, text in zip(nan_rows, texts):
            if _has_scorable_content(text):
                fail(i, f"NaN for a text with words in it ({text[:60]!r})")
    return ~nan


# --------------------------------------------------------------------------- main entry point


def score_table(db_path: str | os.PathLike, table: str, predictor: PredictorLike, *,
                id_col: str = "review_id", text_col: str = "text", rescore: bool = False,
                threshold: float = 0.5, batch_size: int | None = None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                progress: ProgressFn | None = None, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                on_wait: Callable[[str], None] | None = None,
                after_chunk: Callable[[ScoreReport], None] | None = None,
                blob_as_utf8: bool = False, run_id: str | None = None) -> ScoreReport:
    """Score ``table`` in the DuckDB file ``db_path`` and write the sentiment columns back.

    Returns a :class:`ScoreReport`. Raises :class:`NotFoundError` for a missing table/column
    (listing what exists), :class:`InputError` for a column of the wrong type, NULL or duplicate
    ids or clashing columns (nothing written), :class:`ModelOutputError` when the model returns
    something that is not a score (the run is recorded as failed),
    :class:`pipeline.core.duck.LockTimeout` when another process keeps the file locked, or another
    run of this table keeps its claim, too long. ``progress(done, total)`` is called after every
    committed chunk; ``blob_as_utf8`` lets a BLOB text column be decoded as UTF-8. ``run_id`` keys the
    audit row: the Prefect flow-run id when there is one (default: a fresh random id).
    """
    db_path = check_arguments(db_path, table, id_col, text_col, threshold, chunk_rows=chunk_rows,
                              batch_size=_READ_ROWS if batch_size is None else batch_size)
    run = TableRun(db_path, table, id_col, text_col, str(predictor.version), rescore, lock_timeout, on_wait,
                   engine=engine_of(predictor))
    rule = getattr(predictor, "coverage_rule", None)
    report = ScoreReport(run_id=audit.new_run_id(run_id), table=table, db_path=str(db_path), model=run.version,
                         threshold=threshold, coverage_rule=rule.to_dict() if hasattr(rule, "to_dict") else None)
    with table_claim(db_path, table, lock_timeout, on_wait), Attached(db_path, timeout=lock_timeout,
                                                                      on_wait=on_wait) as run.attached:
        t0 = time.perf_counter()
        cols, has_candidates = survey_table(run, blob_as_utf8)
        if has_candidates:
            build_model(run, predictor)     # a lazily loaded model is built (and verified) before anything is written
        start_table_run(run, report, blob_as_utf8, surveyed=cols)
        if progress is not None:
            progress(0, report.rows_to_score)
        try:
            tally = _score_chunks(run, report, predictor, batch_size, chunk_rows, progress, after_chunk)
            if take_model_facts(run, predictor):     # rows came in after the survey: record what it picked
                with run.connect() as con:
                    audit.record_engine(con, report.run_id, **run.engine)
        except BaseException as exc:
            fail_run(run, report, exc, t0)
            raise
        complete_run(run, report, tally.hist, t0, tally.profile)
    return report


def survey_table(run: "TableRun", blob_as_utf8: bool) -> tuple[dict[str, str], bool]:
    """Read only: validate the table (nothing written if refused) and say whether it holds a row to score. ->
    (the column types, whether there is a candidate). Run before the model is loaded, so a run with nothing to
    score never loads one (:class:`pipeline.serve.lazy.LazyPredictor`)."""
    with run.connect() as con:
        return survey(con, run.db_path, run.table, run.id_col, run.text_col, run.version, run.rescore, blob_as_utf8)


def survey(con, db_path: Path, table: str, id_col: str, text_col: str, version: str, rescore: bool,
           blob_as_utf8: bool) -> tuple[dict[str, str], bool]:
    """:func:`survey_table` on an open connection (read-only is enough): (the column types, whether a row with
    text needs a score from ``version``)."""
    cols = check_table(con, db_path, table, id_col, text_col, blob_as_utf8)
    text = _text_sql(text_col, cols[text_col] == "BLOB")
    stale, takes_model = _stale_sql(rescore or not set(_STALE_COLUMNS) <= set(cols))
    T, params = quote_ident(table), [version] if takes_model else []
    # the sentiment columns first: a scored table answers without reading (decompressing) one text
    found = con.execute(f"SELECT EXISTS (SELECT 1 FROM {T} WHERE {stale})", params).fetchone()[0] and \
        con.execute(f"SELECT EXISTS (SELECT 1 FROM {T} WHERE {stale} AND {_has_text(text)})", params).fetchone()[0]
    return cols, bool(found)


def build_model(run: "TableRun", predictor: PredictorLike) -> None:
    """Build a lazily loaded predictor (``.load()``, ``.loaded``) that has not been built yet, and take the device
    and precision it picked into the run's engine facts."""
    load = getattr(predictor, "load", None)
    if callable(load) and not getattr(predictor, "loaded", True):
        load()
    take_model_facts(run, predictor)


def take_model_facts(run: "TableRun", predictor: PredictorLike) -> bool:
    """The predictor's device and precision into the run's engine facts; -> whether they changed."""
    facts = {k: v for k, v in engine_of(predictor).items() if k in ("device", "precision")}
    changed = any(run.engine.get(k) != v for k, v in facts.items())
    run.engine.update(facts)
    return changed


def check_arguments(db_path: str | os.PathLike, table: str, id_col: str, text_col: str, threshold: float,
                    **sizes: int) -> Path:
    """Refuse, before anything is touched, what no run can score: -> the database file's path."""
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold must be within 0..1, got {threshold}")
    for name, value in sizes.items():
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a whole number >= 1, got {value!r}")
    if table == RUNS_TABLE:
        raise InputError(f"{RUNS_TABLE!r} is the audit table of scoring runs; it cannot be scored")
    for c in (id_col, text_col):
        if c in SENTIMENT_COLUMNS:
            raise InputError(f"{c!r} is one of the sentiment columns this command writes; pick another column")
    db_path = Path(db_path)
    if not db_path.exists():
        raise NotFoundError(f"DuckDB database {db_path} does not exist")
    quote_ident(table)                 # an invalid name is refused before its claim file is made
    return db_path


def fail_run(run: "TableRun", report: ScoreReport, exc: BaseException, t0: float) -> None:
    """Record the run as failed with ``exc`` (one line), as far as the database lets us."""
    report.status, report.seconds = "failed", time.perf_counter() - t0
    with contextlib.suppress(Exception), run.connect() as con:
        audit.finish_run(con, report.run_id, " ".join(f"{type(exc).__name__}: {exc}".split())[:2000])


def complete_run(run: "TableRun", report: ScoreReport, hist: np.ndarray, t0: float,
                 profile: Profile | None = None) -> None:
    """Fill the report's totals (rate, deciles, histogram, the written rows' profile) and record the run as
    completed."""
    report.profile = profile.to_dict() if profile is not None else None
    report.seconds = time.perf_counter() - t0
    report.rows_per_s = report.rows_scored / report.seconds if report.seconds > 0 else 0.0
    report.deciles = deciles(hist)
    report.histogram = hist.reshape(20, -1).sum(axis=1).tolist()
    report.status = "completed"
    with run.connect() as con:
        audit.finish_run(con, report.run_id)


def engine_of(predictor, engine: str = "local", workers: int | None = 1, partitions: int | None = None) -> dict:
    """How a run scores, for its audit row: the engine, worker processes, partitions, and the predictor's device,
    precision and ``max_error`` (None for a predictor that does not say)."""
    device = getattr(predictor, "device", None)
    return dict(engine=engine, workers=workers, partitions=partitions,
                device=None if device is None else str(device), precision=getattr(predictor, "precision", None),
                max_error=getattr(predictor, "max_error", None))


@dataclass
class TableRun:
    """One scoring run's fixed facts, and the SQL it pages with (set by :func:`start_table_run`)."""
    db_path: Path
    table: str
    id_col: str
    text_col: str
    version: str
    rescore: bool
    lock_timeout: float
    on_wait: Callable[[str], None] | None
    is_blob: bool = False
    text: str = ""                 # SQL: the text as VARCHAR
    stale: str = ""                # SQL: the row needs a (new) score; reads the sentiment columns only
    candidate: str = ""            # SQL: stale and has text
    params: list = field(default_factory=list)   # parameters of ``stale`` / ``candidate``
    attached: Attached | None = None             # the file's steps while the run holds the table's claim
    engine: dict = field(default_factory=dict)   # audit.record_engine's keywords: how this run scores

    def connect(self):
        """The database file, opened for one step (DuckDB lets no other process in while it is open): attached
        to the run's in-memory instance (:mod:`pipeline.score.attach`, 30 times cheaper than a connection)."""
        if self.attached is not None:
            return self.attached.step()
        return connection(self.db_path, timeout=self.lock_timeout, on_wait=self.on_wait)


def start_table_run(run: TableRun, report: ScoreReport, blob_as_utf8: bool, surveyed: dict | None = None) -> None:
    """Validate (nothing written if refused), then in one transaction: add the sentiment columns, mark
    dead runs, write the audit row and count the candidates. ``surveyed``: the column types a
    :func:`survey_table` of this run found (its row checks are not repeated; the catalog is checked again)."""
    T = quote_ident(run.table)
    check = check_table if surveyed is None else check_schema
    with run.connect() as con:
        cols = check(con, run.db_path, run.table, run.id_col, run.text_col, blob_as_utf8)
        run.is_blob = cols[run.text_col] == "BLOB"
        run.text = _text_sql(run.text_col, run.is_blob)
        # Candidates = stale rows with text. Paging is done on `stale` alone (sentiment columns + id:
        # cheap per chunk, never reads the text column); the text test is applied only to the page's
        # id range. Rows without text are stepped over (counted once as skipped at the start).
        run.stale, takes_model = _stale_sql(run.rescore)
        run.candidate = f"({_has_text(run.text)} AND {run.stale})"
        run.params = [run.version] if takes_model else []
        con.execute("BEGIN")
        for name, typ in SENTIMENT_COLUMNS.items():
            if name not in cols:
                con.execute(f"ALTER TABLE {T} ADD COLUMN {quote_ident(name)} {typ}")
        audit.ensure_table(con)
        audit.mark_dead_runs(con, run.table, report.run_id, run.db_path.parent)
        total, todo, no_text = con.execute(
            f"SELECT count(*), count(*) FILTER (WHERE {run.candidate}), "
            f"count(*) FILTER (WHERE NOT {_has_text(run.text)}) FROM {T}", run.params).fetchone()
        audit.start_run(con, report.run_id, run.table, run.version, int(no_text))
        audit.record_engine(con, report.run_id, **run.engine)
        con.execute("COMMIT")
    report.rows_total, report.rows_to_score, report.rows_skipped = int(total), int(todo), int(no_text)
    report.rows_up_to_date = report.rows_total - report.rows_to_score - report.rows_skipped


def _score_chunks(run: TableRun, report: ScoreReport, predictor: PredictorLike, batch_size: int, chunk_rows: int,
                  progress: ProgressFn | None, after_chunk) -> "_Tally":
    """Read, score and write back chunk after chunk until no candidate is left. -> the score histogram.

    Pipelined, in step order: the model scores chunk k on this thread while a worker thread opens the file
    once to commit chunk k-1 and read page k+1, and closes it again. So the file is open for database work
    only (never while a model runs alone), the model never waits for the database, and every chunk is still
    one transaction committed in page order. The model keeps this (the main) thread: torch runs its
    intra-op parallelism only there (in a worker thread a GRU forward used one core: 517 vs 917 rows/s end to
    end). A failure is raised where the one-step-at-a-time loop raised it: a model error after the chunks
    before it are committed, a read error after the chunk before it."""
    tally = _Tally()
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="reviewflow-score-io") as pool:
        with run.connect() as con:
            page = _read_chunk(con, run, None, chunk_rows, batch_size)
        scored: ScoredChunk | None = None                  # scored, not yet committed
        while page is not None or scored is not None:
            io = pool.submit(_commit_and_read, run, report, scored, page, chunk_rows, batch_size)
            try:
                work = (score_page(run, report.threshold, predictor, page[0])
                        if page is not None and page[0].num_rows else None)
            except BaseException:
                if _settled(io) and scored is not None:   # the chunk before is committed (and counted) first
                    _after_commit(report, scored, tally, progress, after_chunk)
                raise
            nxt, read_error = io.result()
            if scored is not None:
                _after_commit(report, scored, tally, progress, after_chunk)
            scored = work
            if read_error is not None:             # the chunk scored before the bad page is committed first
                if scored is not None:
                    with run.connect() as con:
                        _write_chunk(con, run, report.run_id, scored)
                    _after_commit(report, scored, tally, progress, after_chunk)
                raise read_error
            page = nxt
    return tally


def _settled(io: Future) -> bool:
    """Wait for the commit in flight before a model error propagates; whether it committed (a failure of its
    own gives way to the model's error, which came first)."""
    try:
        io.result()
        return True
    except BaseException:
        return False


def _commit_and_read(run: TableRun, report: ScoreReport, scored: ScoredChunk | None, page, chunk_rows: int,
                     batch_size: int) -> tuple[Any, Exception | None]:
    """One opening of the file: commit ``scored`` (if any), then read the page after ``page`` (if any).
    -> (next page or None, the read's error: returned, not raised, so the caller commits the chunk it is
    scoring first)."""
    with run.connect() as con:
        if scored is not None:
            _write_chunk(con, run, report.run_id, scored)
        if page is None:
            return None, None
        try:
            return _read_chunk(con, run, page[1], chunk_rows, batch_size), None
        except Exception as exc:        # noqa: BLE001 - re-raised by the caller, after the chunk in flight
            return None, exc


@dataclass
class _Tally:
    """What the committed chunks add up to: the histogram of their scores, and their candidates."""
    hist: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    processed: int = 0
    profile: Profile = field(default_factory=Profile)


def _after_commit(report: ScoreReport, scored: ScoredChunk, tally: _Tally, progress: ProgressFn | None,
                  after_chunk) -> None:
    """Count a committed chunk into the report and the tally, then tell ``progress`` and ``after_chunk``."""
    count_chunk(report, scored.written_scores, scored.unknown, scored.skipped)
    tally.hist += np.histogram(scored.written_scores, bins=HIST_BINS, range=(0.0, 1.0))[0]
    tally.profile.merge(scored.profile)
    report.chunks += 1
    tally.processed += scored.rows
    if progress is not None:
        progress(min(tally.processed, report.rows_to_score), report.rows_to_score)
    if after_chunk is not None:
        after_chunk(report)


def count_chunk(report: ScoreReport, scores: np.ndarray, unknown: int, skipped: int) -> None:
    """Add one written chunk to the report's counts (``scores``: the scores written)."""
    n_pos = int((scores >= report.threshold).sum())
    report.rows_scored += len(scores)
    report.rows_unknown += unknown
    report.rows_skipped += skipped
    report.label_counts["positive"] += n_pos
    report.label_counts["negative"] += len(scores) - n_pos
    report.label_counts["unknown"] += unknown


def _read_chunk(con, run: TableRun, last, chunk_rows: int, batch_size: int) -> tuple[pa.Table, Any] | None:
    """The next page of up to ``chunk_rows`` stale ids after ``last`` (keyset pagination: cheap to resume
    after reopening), and the (id, text) of its candidates. -> (chunk, last id of the page), None when done."""
    T, ID = quote_ident(run.table), quote_ident(run.id_col)
    after = f" AND {ID} > ?" if last is not None else ""
    after_p = [last] if last is not None else []
    ids = con.sql(f"SELECT {ID} FROM {T} WHERE {run.stale}{after} ORDER BY {ID} LIMIT {int(chunk_rows)}",
                  params=run.params + after_p).to_arrow_table()
    if ids.num_rows == 0:
        return None
    hi = ids.column(0)[-1].as_py()
    page = f"TRUE{after} AND {ID} <= ?"
    if run.is_blob:        # a BLOB written since the start may not be UTF-8: name it
        refuse_invalid_utf8(con, run.table, run.id_col, run.text_col, page, after_p + [hi])
    reader = con.sql(
        f"SELECT {ID} AS id, {run.text} AS text FROM {T} WHERE {run.candidate} AND {page} ORDER BY {ID}",
        params=run.params + after_p + [hi],
    ).to_arrow_reader(batch_size=max(batch_size or 0, _READ_ROWS))
    return pa.Table.from_batches(list(reader), schema=reader.schema), hi


@dataclass
class ScoredChunk:
    """A chunk scored and checked, ready to commit: the rows to write (``out``: id, score, label, coverage),
    the scores written, and the counts of unknown and skipped rows."""
    out: pa.Table
    written_scores: np.ndarray
    unknown: int
    skipped: int
    rows: int                 # candidates in the chunk (written or skipped)
    profile: Profile = field(default_factory=Profile)   # what the written rows look like (drift, pipeline.score.drift)


_LABELS = pa.array(["negative", "positive", "unknown"], pa.string())


def score_page(run: TableRun, threshold: float, predictor: PredictorLike, chunk: pa.Table) -> ScoredChunk:
    """Score one page's candidates (on the worker thread; no database work) and check the answer."""
    answer = predict_chunk_with_coverage(predictor, chunk.column("text"))
    unknown = answer.unknown            # never a score for these, even if the predictor gave one
    ok = check_scores(answer.scores, chunk, run.version, run.table, unknown) & ~unknown
    written = ok | unknown
    scores, coverage, unknown_w = answer.scores[written], answer.coverage[written], unknown[written]
    codes = np.where(unknown_w, 2, (scores >= threshold).astype(np.int64))
    tokens = None if answer.tokens is None else answer.tokens[written]
    out = pa.table({"id": chunk.column("id").filter(pa.array(written)),
                    "score": pa.array(scores, pa.float64(), mask=unknown_w | np.isnan(scores)),
                    "label": _LABELS.take(pa.array(codes)),
                    "coverage": pa.array(coverage, pa.float64(), mask=np.isnan(coverage)),
                    "tokens": pa.array(tokens if tokens is not None else np.zeros(len(codes), np.int64), pa.int64(),
                                       mask=None if tokens is not None else np.ones(len(codes), bool))})
    profile = Profile().add(np.where(unknown_w, np.nan, scores), codes, tokens, coverage)
    return ScoredChunk(out, answer.scores[ok], int(unknown.sum()), int((~written).sum()), chunk.num_rows, profile)


def _write_chunk(con, run: TableRun, run_id: str, scored: ScoredChunk) -> None:
    """Write one chunk's scores back: ONE transaction, together with the audit row's progress, so
    ``kill -9`` at any moment leaves whole chunks only. Unknown rows get label 'unknown' and a NULL score."""
    T, ID = quote_ident(run.table), quote_ident(run.id_col)
    con.register(_CHUNK_VIEW, scored.out)
    try:
        con.execute("BEGIN")
        con.execute(
            f"UPDATE {T} SET sentiment_score = c.score, sentiment_label = c.label, sentiment_model = ?, "
            f"scored_at = now(), sentiment_coverage = c.coverage FROM {_CHUNK_VIEW} AS c WHERE {T}.{ID} = c.id",
            [run.version],
        )
        audit.add_progress(con, run_id, len(scored.written_scores), scored.skipped, scored.unknown)
        con.execute("COMMIT")
    finally:
        con.unregister(_CHUNK_VIEW)
