"""Score a DuckDB table in id-range partitions that many processes (Dask workers) score at once.

DuckDB has one writer, so the work is split around it; the committer does as little per row as it can:

1. **Plan and snapshot (the committer, once).** Holding the table's claim (:mod:`pipeline.score.claim`), the
   committer validates the table and starts the audit row as :func:`pipeline.score.writeback.score_table`
   does. Then, in ONE opening of the file: one query cuts the ids of the stale rows (the sentiment columns only:
   the text is not read) into ranges of ``rows_per_part`` rows (row numbers over the id order: ``first``,
   ``last``, ``rows`` per part), a ``CHECKPOINT`` puts
   everything in the main file, and the file is copied byte for byte into the scratch space
   (:mod:`pipeline.score.scratch`: a local folder or an object store) as a read-only *snapshot* named by its
   SHA-256. Nothing is exported row by row: a file copy runs at disk speed (100k IMDb rows, 54 MB: ~0.05 s for
   the checkpoint, the copy and its hash, against 1.5 s to write the candidates into a new DuckDB file). No stale
   rows: no snapshot.
2. **Score (anywhere, in parallel).** :func:`score_part` (a task on a worker) opens the snapshot
   ``read_only`` (once per process: a local scratch's file after checking its hash, or one verified download
   from an object store), reads its part's rows ``WHERE stale AND id BETWEEN first AND last``, checks their
   number, keeps those with text (the run's own predicates, so exactly the rows the one-process path scores),
   scores
   them and writes the scored part ``(id, score, label, coverage, tokens)`` into the scratch space,
   atomically, named after the part's key (table, model version, id range, rows). Its metadata records the
   model, the ``--max-error`` and the SHA-256 of the rows it read; a scored part already there with the same
   three is reused (a rerun of a part is a no-op), any other is scored again. The run's ``--max-error``
   (:mod:`pipeline.model.abstain`) travels in the part's spec; the worker's predictor must have it.
3. **Stage (the committer, as parts finish, while the others are scored).** Each scored part is read back,
   verified by its SHA-256, its model, ``--max-error``, part key, row count and id range, and appended to the
   run's staged scores (Arrow, in the committer's memory); its counts, histogram and drift profile are
   added up. Nothing is written to the database yet.
4. **Fold (the committer, once, at the end).** All staged scores go into the table in ONE transaction:
   ``UPDATE t SET ... FROM staged WHERE t.id = staged.id AND stale``, together with the audit row's counts. If
   the UPDATE changed fewer rows than were staged (someone wrote sentiment columns meanwhile), it is rolled back
   and redone with the rows still stale only, so the counts are those of the rows written.

Faults (tested with ``kill -9`` of the committer at each step, tests/test_score_partitioned_kill.py):

* a worker that dies mid-part: the engine (Dask) runs the part again elsewhere; its scored part, if written,
  is whole (atomic) and the same;
* the committer killed before the fold commits (after the snapshot, after some parts were staged, inside the
  fold's transaction): the table is as it was, the audit row stays ``running`` (a later run marks it
  ``failed``). The next run plans the same candidates into the same ranges, so the same part keys: every
  scored part whose rows read the same is reused, and the fold writes each row once;
* killed after the fold committed: every row is written and counted once; the next run finds nothing to do
  (and removes the scratch folder). Every row is scored exactly once, by one model version: the committer
  resolves the version once and refuses a scored part of another;
* a part that fails to score (a broken model): the run fails and is recorded as failed; nothing is folded
  (the parts scored before stay in the scratch space and are reused by the next run).

The snapshot is removed once every part is scored; the scratch folder of a (database, table, model) is removed
when a run of it completes. For tests only, ``REVIEWFLOW_TEST_KILL_AT=<step>`` makes the committer SIGKILL
itself at a named step (``planned``, ``staged:<n>``, ``fold``, ``folded``).
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.duck import DEFAULT_LOCK_TIMEOUT, quote_ident
from pipeline.core.errors import InputError
from pipeline.score import audit
from pipeline.score.attach import Attached
from pipeline.score.claim import table_claim
from pipeline.model.profile import Profile
from pipeline.score.inputs import refuse_invalid_utf8
from pipeline.score.scratch import Scratch, ScratchIntegrityError, parquet_metadata
from pipeline.score.writeback import (HIST_BINS, PredictorLike, ScoreReport, TableRun, _has_text, check_arguments,
                                      complete_run, count_chunk, fail_run, score_page, start_table_run)

DEFAULT_ROWS_PER_PART = 50_000     # one task per part: big enough that a task's overhead (~10 ms) is noise
KILL_AT_ENV = "REVIEWFLOW_TEST_KILL_AT"   # tests only: the committer SIGKILLs itself at this step
_STAGED_VIEW = "__reviewflow_staged_scores"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class PartSpec:
    """One partition: an id range of the run's candidates, the snapshot to read it from, where its scored part goes."""
    index: int
    rows: int                 # stale rows in [first_id, last_id] when the run planned (with text or not)
    first_id: Any
    last_id: Any
    snapshot_path: str        # the read-only copy of the database file in the scratch space
    snapshot_sha256: str
    query: str                # SELECT id, text, has_text of the part's stale rows from the snapshot, in id order
    params: tuple             # the query's parameters (the run's, then first_id, last_id)
    key: str                  # the part's identity: table, model version, id range and rows
    scored_path: str
    scratch: str              # the scratch URI (workers open it themselves)
    version: str              # the model version every row of the run is scored with
    table: str
    max_error: float | None = None   # the run's --max-error (pipeline.model.abstain); None: off


@dataclass
class PartResult:
    """A scored part, as a worker reports it."""
    index: int
    scored_path: str
    scored_sha256: str
    reused: bool          # the scored part was already there (a rerun): nothing was scored again
    worker: str           # host:pid of the process that scored (or found) it
    seconds: float
    device: str | None = None
    precision: str | None = None
    coverage_rule: dict | None = None
    peak_rss_mib: float | None = None    # the worker process's peak resident memory after this part
    read_seconds: float = 0.0            # of ``seconds``: opening the snapshot (first part of a process) and reading

    def to_dict(self) -> dict:
        return asdict(self)


def _key(text: str) -> str:
    """A folder name for any string: readable when it is already safe, else a hash prefix is added."""
    safe = _SAFE.sub("_", text)[:40]
    return safe if safe == text else f"{safe}-{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def run_folder(scratch: Scratch, db_path: Path, table: str, version: str) -> str:
    """The scratch folder of a (database file, table, model version)."""
    db_key = hashlib.sha1(str(Path(db_path).resolve()).encode()).hexdigest()[:12]
    return scratch.join(f"db-{db_key}", _key(table), _key(version))


def _kill_point(step: str) -> None:
    """Tests only: SIGKILL this process at ``step`` when ``REVIEWFLOW_TEST_KILL_AT`` names it."""
    if os.environ.get(KILL_AT_ENV) == step:
        signal.raise_signal(signal.SIGKILL)


# --------------------------------------------------------------------------- 1. plan and snapshot (the committer)


def plan_parts(run: TableRun, scratch: Scratch, rows_per_part: int, blob_as_utf8: bool,
               max_error: float | None = None) -> list[PartSpec]:
    """Cut the run's candidates into id ranges of ``rows_per_part`` rows and snapshot the database file for the
    workers, in one opening of the file (nobody writes it in between). -> the parts, in id order; [] when there
    is nothing to score (then no snapshot is made)."""
    T, ID = quote_ident(run.table), quote_ident(run.id_col)
    folder = run_folder(scratch, run.db_path, run.table, run.version)
    with run.connect() as con:
        if run.is_blob and blob_as_utf8:
            refuse_invalid_utf8(con, run.table, run.id_col, run.text_col, run.stale, run.params)
        # on the stale predicate alone (the sentiment columns and the id: the text is not read here, 4x cheaper
        # at 100k IMDb rows); the worker applies the text test to its range, as the one-process path does per page
        ranges = con.execute(
            f"SELECT min(id), max(id), count(*) FROM (SELECT {ID} AS id, (row_number() OVER (ORDER BY {ID}) - 1) "
            f"// {int(rows_per_part)} AS part FROM {T} WHERE {run.stale}) GROUP BY part ORDER BY part",
            run.params).fetchall()
        if not ranges:
            return []
        con.execute("CHECKPOINT")          # everything committed is in the main file: its copy is the database
        wal = Path(f"{run.db_path}.wal")
        if wal.exists() and wal.stat().st_size:
            raise InputError(f"{run.db_path} kept a write-ahead log after CHECKPOINT; it cannot be snapshotted")
        snapshot, digest = scratch.copy_in(run.db_path, folder, "snapshot-", ".duckdb")
    query = (f"SELECT {ID} AS id, {run.text} AS text, {_has_text(run.text)} AS has_text FROM {T} "
             f"WHERE {run.stale} AND {ID} BETWEEN ? AND ? ORDER BY {ID}")
    parts = []
    for index, (first, last, rows) in enumerate(ranges):
        key = hashlib.sha256(repr((run.table, run.version, run.id_col, run.text_col, run.rescore, first, last,
                                   int(rows))).encode()).hexdigest()
        parts.append(PartSpec(index=index, rows=int(rows), first_id=first, last_id=last, snapshot_path=snapshot,
                              snapshot_sha256=digest, query=query, params=tuple(run.params) + (first, last),
                              key=key, scored_path=scratch.under(folder, f"scored-{key[:24]}.parquet"),
                              scratch=scratch.uri, version=run.version, table=run.table, max_error=max_error))
    return parts


# --------------------------------------------------------------------------- 2. score (on a worker)


_SNAPSHOT_LOCK = threading.Lock()
_SNAPSHOT: dict[str, Any] = {"key": None, "con": None}     # this process's open snapshot (one at a time)


def read_part(part: PartSpec) -> pa.Table:
    """The part's candidates ``(id, text)`` (stale rows with text) in id order, read from the run's snapshot (opened
    read-only once per process and kept open; its hash checked when opened). Raises :class:`ScratchIntegrityError`
    when the snapshot is not what the committer wrote, or the range does not hold the rows it was planned with."""
    import duckdb

    key = (part.scratch, part.snapshot_path, part.snapshot_sha256)
    with _SNAPSHOT_LOCK:
        if _SNAPSHOT["key"] != key:
            if _SNAPSHOT["con"] is not None:
                _SNAPSHOT["con"].close()
                _SNAPSHOT.update(key=None, con=None)
            local = Scratch(part.scratch).local_copy(part.snapshot_path, part.snapshot_sha256)
            con = duckdb.connect(local, read_only=True, config={"threads": 1})
            _SNAPSHOT.update(key=key, con=con)
        cursor = _SNAPSHOT["con"].cursor()
    try:
        rows = cursor.sql(part.query, params=list(part.params)).to_arrow_table()
    finally:
        cursor.close()
    if rows.num_rows != part.rows:
        raise ScratchIntegrityError(f"partition {part.index} ({part.first_id}..{part.last_id}) read {rows.num_rows} "
                                    f"rows from the snapshot, planned with {part.rows}")
    return rows.filter(rows.column("has_text")).select(["id", "text"])


def rows_digest(rows: pa.Table) -> str:
    """SHA-256 of a part's ``(id, text)`` as read (Arrow IPC of the values, one batch): a scored part made from
    the same rows is reused, one made from other rows (a text changed since) is not."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write_table(rows.combine_chunks())
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()


def score_part(part: PartSpec, predictor: PredictorLike, threshold: float = 0.5) -> PartResult:
    """Score one part with ``predictor`` (which must be model ``part.version``) into its scored part.

    A scored part already there is reused after checking that it reads and was made from the same rows by the same
    model with the same ``--max-error``: a rerun of a part is a no-op. Raises
    :class:`pipeline.score.writeback.ModelOutputError` for a broken model (nothing written) and
    :class:`ScratchIntegrityError` when the snapshot is not what the committer wrote."""
    t0 = time.perf_counter()
    if str(predictor.version) != part.version:
        raise InputError(f"partition {part.index} is to be scored with model {part.version}, "
                         f"not {predictor.version}")
    if getattr(predictor, "max_error", None) != part.max_error:
        raise InputError(f"partition {part.index} is to be scored with --max-error {part.max_error}, not "
                         f"{getattr(predictor, 'max_error', None)}")
    scratch = Scratch(part.scratch)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    engine = dict(device=_attr(predictor, "device"), precision=_attr(predictor, "precision"),
                  coverage_rule=_rule(predictor))
    rows = read_part(part)
    digest = rows_digest(rows)
    read_s = time.perf_counter() - t0
    if scratch.exists(part.scored_path):
        data = scratch.read_bytes(part.scored_path)
        if _scored_part_ok(data, part, digest):
            return PartResult(part.index, part.scored_path, hashlib.sha256(data).hexdigest(), True, worker,
                              time.perf_counter() - t0, **engine, peak_rss_mib=peak_rss_mib(), read_seconds=read_s)
    if rows.num_rows:
        fake = TableRun(Path(""), part.table, "id", "text", part.version, False, 0.0, None)
        out = score_page(fake, threshold, predictor, rows).out
    else:                          # only rows without text in the range: nothing to score, an empty part
        out = pa.table({"id": rows.column("id"), "score": pa.array([], pa.float64()), "label": pa.array([], pa.string()),
                        "coverage": pa.array([], pa.float64()), "tokens": pa.array([], pa.int64())})
    sha = scratch.write_parquet(out, part.scored_path,
                                metadata={"reviewflow.model": part.version,
                                          "reviewflow.part": part.key,
                                          "reviewflow.input_sha256": digest,
                                          "reviewflow.rows": str(part.rows),
                                          "reviewflow.candidates": str(rows.num_rows),
                                          "reviewflow.max_error": max_error_tag(part.max_error)})
    return PartResult(part.index, part.scored_path, sha, False, worker, time.perf_counter() - t0, **engine,
                      peak_rss_mib=peak_rss_mib(), read_seconds=read_s)


def peak_rss_mib() -> float | None:
    """This process's peak resident memory (VmHWM, MiB); None where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024.0 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None


def _attr(predictor, name: str) -> str | None:
    value = getattr(predictor, name, None)
    return None if value is None else str(value)


def _rule(predictor) -> dict | None:
    rule = getattr(predictor, "coverage_rule", None)
    return rule.to_dict() if hasattr(rule, "to_dict") else None


def max_error_tag(max_error: float | None) -> str:
    """A scored part's ``reviewflow.max_error`` metadata: ``""`` for off, else the rate's repr."""
    return "" if max_error is None else repr(float(max_error))


def _scored_part_ok(data: bytes, part: PartSpec, digest: str) -> bool:
    """A scored part left by an earlier try: reusable when it parses and names this part, the rows it was made
    from, the model and the ``--max-error`` (a part scored before without the tag was scored without it)."""
    from pipeline.score.scratch import read_parquet_bytes

    try:
        meta = parquet_metadata(read_parquet_bytes(data, part.scored_path))
    except ScratchIntegrityError:
        return False
    return (meta.get("reviewflow.model") == part.version and meta.get("reviewflow.part") == part.key
            and meta.get("reviewflow.input_sha256") == digest
            and meta.get("reviewflow.max_error", "") == max_error_tag(part.max_error))


# --------------------------------------------------------------------------- 3. stage and 4. fold (the committer)


@dataclass
class _Staged:
    """The verified scored parts of a run, waiting for the fold, and what they add up to."""
    tables: list = field(default_factory=list)      # one Arrow table (id, score, label, coverage, tokens) per part
    hist: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    written: list = field(default_factory=list)     # per part: the scores to be written (numpy)
    unknown: int = 0
    skipped: int = 0
    rows: int = 0            # rows staged (each candidate once)
    parts: int = 0
    reused: int = 0
    folded: int = 0          # rows the fold's UPDATE changed
    workers: dict = field(default_factory=dict)     # worker -> its peak RSS (MiB) as last reported
    score_seconds: float = 0.0                      # summed over parts, on the workers
    read_seconds: float = 0.0                       # of which reading the snapshot, summed over parts
    start_seconds: float = 0.0                      # the committer, serial: claim, checks, audit row, counts
    plan_seconds: float = 0.0                       # serial: plan query + checkpoint + snapshot copy
    stage_seconds: float = 0.0                      # while workers score: verifying and staging parts
    fold_seconds: float = 0.0                       # serial: the one UPDATE transaction
    scoring_wall_seconds: float = 0.0               # from the parts' submission to the last part staged
    first_part_seconds: float | None = None         # from submission to the first part back (worker start-up)
    profile: Profile = field(default_factory=Profile)

    def summary(self, parts: int) -> dict:
        """What the run's report says about the engine (see :class:`ScoreReport`.engine)."""
        return {"partitions": parts, "parts_staged": self.parts, "parts_reused": self.reused,
                "rows_staged": self.rows, "rows_folded": self.folded, "workers_seen": len(self.workers),
                "worker_peak_rss_mib": {w: round(m, 1) for w, m in sorted(self.workers.items()) if m is not None},
                "start_seconds": round(self.start_seconds, 3), "plan_seconds": round(self.plan_seconds, 3),
                "stage_seconds": round(self.stage_seconds, 3), "fold_seconds": round(self.fold_seconds, 3),
                "score_seconds_total": round(self.score_seconds, 3), "read_seconds_total": round(self.read_seconds, 3),
                "scoring_wall_seconds": round(self.scoring_wall_seconds, 3),
                "first_part_seconds": None if self.first_part_seconds is None else round(self.first_part_seconds, 3),
                "fold_rows_per_s": round(self.folded / self.fold_seconds, 1) if self.fold_seconds else None}


def stage_part(run: TableRun, part: PartSpec, result: PartResult, staged: _Staged) -> None:
    """Verify one scored part (SHA-256, model, part, ``--max-error``, rows, id range) and stage it for the fold."""
    t0 = time.perf_counter()
    scored = Scratch(part.scratch).read_parquet(result.scored_path, result.scored_sha256)
    meta = parquet_metadata(scored)
    if (meta.get("reviewflow.model") != run.version or meta.get("reviewflow.part") != part.key
            or meta.get("reviewflow.max_error", "") != max_error_tag(part.max_error)
            or meta.get("reviewflow.rows") != str(part.rows)):
        raise ScratchIntegrityError(f"scored part {result.scored_path} was not made from partition {part.index} "
                                    f"by model {run.version} with --max-error {part.max_error}; it is not merged")
    ids, candidates = scored.column("id"), meta.get("reviewflow.candidates", "")
    if not candidates.isdigit() or not scored.num_rows <= int(candidates) <= part.rows or (scored.num_rows and (
            pc.less(pc.min(ids), pa.scalar(part.first_id, ids.type)).as_py()
            or pc.greater(pc.max(ids), pa.scalar(part.last_id, ids.type)).as_py())):
        raise ScratchIntegrityError(f"scored part {result.scored_path} holds rows outside partition {part.index}; "
                                    f"it is not merged")
    written, unknown, hist, profile = _stats(scored)
    staged.tables.append(scored.replace_schema_metadata(None))
    staged.written.append(written)
    staged.hist += hist
    staged.profile.merge(profile)
    staged.unknown += unknown
    staged.skipped += int(candidates) - scored.num_rows     # text with nothing to score (rows without text: at start)
    staged.rows += scored.num_rows
    staged.parts += 1
    staged.reused += int(result.reused)
    staged.workers[result.worker] = result.peak_rss_mib
    staged.score_seconds += result.seconds
    staged.read_seconds += result.read_seconds
    staged.stage_seconds += time.perf_counter() - t0


def _stats(scored: pa.Table) -> tuple[np.ndarray, int, np.ndarray, Profile]:
    """Of scored rows: the scores written (not NULL), the 'unknown' rows, the score histogram and drift profile."""
    scores = pc.fill_null(scored.column("score"), np.nan).to_numpy(zero_copy_only=False)
    written = scores[~np.isnan(scores)]
    unknown = int(pc.sum(pc.equal(scored.column("label"), "unknown")).as_py() or 0)
    return written, unknown, np.histogram(written, bins=HIST_BINS, range=(0.0, 1.0))[0], _part_profile(scored)


def fold(run: TableRun, report: ScoreReport, staged: _Staged) -> int:
    """Write every staged score into the table: ONE ``UPDATE ... FROM staged`` transaction with the audit row's
    counts. -> rows written. Only rows still stale are written; when some staged row is not (someone wrote its
    sentiment columns since the plan), the transaction is redone with the stale ones, and the counts with them."""
    t0 = time.perf_counter()
    if not staged.tables:
        return 0
    rows = pa.concat_tables(staged.tables)
    T, ID = quote_ident(run.table), quote_ident(run.id_col)
    update = (f"UPDATE {T} SET sentiment_score = c.score, sentiment_label = c.label, sentiment_model = ?, "
              f"scored_at = now(), sentiment_coverage = c.coverage FROM {_STAGED_VIEW} AS c "
              f"WHERE {T}.{ID} = c.id AND {run.stale}")
    with run.connect() as con:
        con.register(_STAGED_VIEW, rows)
        try:
            con.execute("BEGIN")
            updated = con.execute(update, [run.version] + run.params).fetchall()[0][0]
            if updated != rows.num_rows:
                con.execute("ROLLBACK")
                still = con.sql(f"SELECT c.id FROM {_STAGED_VIEW} AS c JOIN {T} ON {T}.{ID} = c.id WHERE {run.stale}",
                                params=run.params).to_arrow_table().column(0)
                rows = rows.filter(pc.is_in(rows.column("id"), value_set=still.combine_chunks()))
                written, unknown, hist, profile = _stats(rows)
                staged.written, staged.unknown, staged.hist, staged.profile = [written], unknown, hist, profile
                con.unregister(_STAGED_VIEW)
                con.register(_STAGED_VIEW, rows)
                con.execute("BEGIN")
                updated = con.execute(update, [run.version] + run.params).fetchall()[0][0]
            written = np.concatenate(staged.written) if staged.written else np.zeros(0)
            audit.add_progress(con, report.run_id, len(written), staged.skipped, staged.unknown)
            _kill_point("fold")
            con.execute("COMMIT")
        finally:
            con.unregister(_STAGED_VIEW)
    _kill_point("folded")
    count_chunk(report, written, staged.unknown, staged.skipped)
    report.chunks += staged.parts
    staged.folded = int(updated)
    staged.fold_seconds = time.perf_counter() - t0
    return int(updated)


def _part_profile(scored: pa.Table) -> Profile:
    """The drift profile of a scored part's rows (as :func:`pipeline.score.writeback.score_page` makes it)."""
    codes = pc.index_in(scored.column("label"), pa.array(["negative", "positive", "unknown"])).to_numpy(
        zero_copy_only=False)
    tokens = scored.column("tokens") if "tokens" in scored.column_names else None
    tokens = None if tokens is None or tokens.null_count == len(tokens) else \
        pc.fill_null(tokens, 0).to_numpy(zero_copy_only=False)
    return Profile().add(pc.fill_null(scored.column("score"), np.nan).to_numpy(zero_copy_only=False), codes, tokens,
                         pc.fill_null(scored.column("coverage"), np.nan).to_numpy(zero_copy_only=False))


# --------------------------------------------------------------------------- the whole run


MapParts = Callable[[list[PartSpec]], Iterable[PartResult]]


def preflight(db_path: str | os.PathLike, table: str, *, id_col: str = "review_id", text_col: str = "text",
              threshold: float = 0.5, rows_per_part: int = DEFAULT_ROWS_PER_PART, blob_as_utf8: bool = False,
              lock_timeout: float = DEFAULT_LOCK_TIMEOUT, version: str | None = None, rescore: bool = False) -> bool:
    """The checks a run makes before it writes anything (arguments, table, columns and their types), made
    read-only and before a cluster is started for it: a typo costs a second, not a cluster start-up. The run
    makes them again under its claim. -> whether a row with text needs a score from ``version`` (True without
    one): with nothing to score, no cluster need start, and no model load."""
    from pipeline.core.duck import connection
    from pipeline.score.inputs import check_table
    from pipeline.score.writeback import survey

    db_path = check_arguments(db_path, table, id_col, text_col, threshold, rows_per_part=rows_per_part)
    with connection(db_path, read_only=True, timeout=lock_timeout) as con:
        if not version:
            check_table(con, db_path, table, id_col, text_col, blob_as_utf8)
            return True
        return survey(con, db_path, table, id_col, text_col, version, rescore, blob_as_utf8)[1]


def serial_map(predictor: PredictorLike, threshold: float) -> MapParts:
    """Score the parts one after the other in this process (tests, and the reference for the engines)."""
    def run(parts: list[PartSpec]) -> Iterator[PartResult]:
        for part in parts:
            yield score_part(part, predictor, threshold)
    return run


def score_table_partitioned(db_path: str | os.PathLike, table: str, version: str, map_parts: MapParts, *,
                            scratch: str, id_col: str = "review_id", text_col: str = "text",
                            rescore: bool = False, threshold: float = 0.5,
                            rows_per_part: int = DEFAULT_ROWS_PER_PART, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
                            on_wait: Callable[[str], None] | None = None,
                            progress: Callable[[int, int], None] | None = None, blob_as_utf8: bool = False,
                            run_id: str | None = None, engine: str = "dask", workers: int | None = None,
                            max_error: float | None = None) -> ScoreReport:
    """Score ``table`` of ``db_path`` with model ``version`` in partitions (see the module docstring).

    ``map_parts(parts)`` scores the parts somewhere (a Dask cluster through Prefect, or :func:`serial_map`)
    and yields each :class:`PartResult` as it finishes; each is verified and staged at once, and all are folded
    into the table in one transaction at the end. ``scratch`` is the scratch URI. Same checks, columns, audit
    row and report as :func:`pipeline.score.writeback.score_table`; the audit row also records the engine, the
    worker count and the partitions; ``report.chunks`` is the number of parts. ``max_error``: the
    ``--max-error`` every part must be scored with (its predictor's ``max_error``; a part's metadata records it)."""
    db_path = check_arguments(db_path, table, id_col, text_col, threshold, rows_per_part=rows_per_part)
    space = Scratch(scratch)
    run = TableRun(db_path, table, id_col, text_col, str(version), rescore, lock_timeout, on_wait,
                   engine=dict(engine=engine, workers=workers, partitions=None, max_error=max_error))
    report = ScoreReport(run_id=audit.new_run_id(run_id), table=table, db_path=str(db_path), model=run.version,
                         threshold=threshold)
    folder = run_folder(space, db_path, table, run.version)
    with table_claim(db_path, table, lock_timeout, on_wait), Attached(db_path, timeout=lock_timeout,
                                                                      on_wait=on_wait) as run.attached:
        t0 = time.perf_counter()
        start_table_run(run, report, blob_as_utf8)
        try:
            staged = _plan_score_fold(run, report, space, rows_per_part, blob_as_utf8, map_parts, progress,
                                      max_error, start_seconds=time.perf_counter() - t0)
        except BaseException as exc:
            fail_run(run, report, exc, t0)
            raise
        complete_run(run, report, staged.hist, t0, staged.profile)
    space.remove_tree(folder)
    space.remove_empty_parents(folder)
    return report


def _plan_score_fold(run: TableRun, report: ScoreReport, space: Scratch, rows_per_part: int, blob_as_utf8: bool,
                     map_parts: MapParts, progress, max_error: float | None = None,
                     start_seconds: float = 0.0) -> _Staged:
    t0 = time.perf_counter()
    parts = plan_parts(run, space, rows_per_part, blob_as_utf8, max_error)
    staged = _Staged(start_seconds=start_seconds, plan_seconds=time.perf_counter() - t0)
    by_index = {p.index: p for p in parts}
    _record_engine(run, report, parts, None)
    _kill_point("planned")
    if progress is not None:
        progress(0, report.rows_to_score)
    t1 = time.perf_counter()
    for result in (map_parts(parts) if parts else ()):
        part = by_index.pop(result.index, None)
        if part is None:
            raise InputError(f"partition {result.index} was reported twice, or was never planned")
        stage_part(run, part, result, staged)
        if staged.first_part_seconds is None:
            staged.first_part_seconds = time.perf_counter() - t1
        if staged.parts == 1:
            report.coverage_rule = result.coverage_rule
            _record_engine(run, report, parts, result)
        _kill_point(f"staged:{staged.parts}")
        done = staged.rows + staged.skipped            # candidates (rows with text) staged so far
        if progress is not None:
            progress(min(done, report.rows_to_score), report.rows_to_score)
    if by_index:
        raise InputError(f"{len(by_index)} partition(s) were never scored: {sorted(by_index)[:10]}")
    staged.scoring_wall_seconds = time.perf_counter() - t1 if parts else 0.0
    if parts:
        space.remove(parts[0].snapshot_path)       # every part is scored: the workers are done with it
    fold(run, report, staged)
    report.engine = {"engine": run.engine.get("engine"), "workers": run.engine.get("workers")} | staged.summary(len(parts))
    return staged


def _record_engine(run: TableRun, report: ScoreReport, parts: list[PartSpec], first: PartResult | None) -> None:
    """The audit row's engine columns: the partitions planned and, once a part is in, its device and precision."""
    run.engine.update(partitions=len(parts))
    if first is not None:
        run.engine.update(device=first.device, precision=first.precision)
    with run.connect() as con:
        audit.record_engine(con, report.run_id, **{k: run.engine.get(k) for k in
                                                   ("engine", "workers", "partitions", "device", "precision",
                                                    "max_error")})
