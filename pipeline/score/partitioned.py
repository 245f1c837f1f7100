"""Score a DuckDB table in Parquet partitions that many processes (Dask workers) score at once.

DuckDB has one writer, so the work is split around it:

1. **Export (the committer, once).** Holding the table's claim (:mod:`pipeline.score.claim`), the committer
   validates the table and starts the audit row as :func:`pipeline.score.writeback.score_table` does, then
   streams the candidate rows ``(id, text)`` in id order, in ONE read, into Parquet parts of ``rows_per_part``
   rows in the scratch space (:mod:`pipeline.score.scratch`: a local folder or an object store). A part's
   name is the hash of its bytes, under a folder named after the database, the table and the model version.
2. **Score (anywhere, in parallel).** :func:`score_part` (a task on a worker) reads one part, scores it with
   the model and writes the scored part ``(id, score, label, coverage)`` beside it, atomically, named after
   the input's hash. A scored part that is already there is reused: scoring a part again is a no-op. The run's
   ``--max-error`` (:mod:`pipeline.model.abstain`) travels in the part's spec; the worker's predictor must have
   it, the scored part's metadata records it, and a scored part of another one is neither reused nor merged.
3. **Merge (the committer, part by part, as they finish).** Each scored part is read back, verified by its
   hash and its model, and written into the table with ONE ``UPDATE ... FROM part`` in its own transaction,
   together with the audit row's counts. The file is open only for that step, so readers get in between.

Faults:

* a worker that dies mid-part: the engine (Dask) runs the part again elsewhere; nothing was merged from it;
* the whole run killed (``kill -9``): merged parts are committed; the next run exports only the rows still
  to score. Parts hold whole pages of the id order, so the unmerged parts come out with the same bytes and
  their scored parts (if written) are reused. Every row is scored exactly once, by one model version: the
  committer resolves the version once and refuses a scored part of another.
* a part that fails to score (a broken model): the run fails and is recorded as failed; parts merged before
  stay committed, as chunks do.

The scratch folder of a (database, table, model) is removed when a run of it completes.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
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
from pipeline.score.writeback import (HIST_BINS, PredictorLike, ScoreReport, TableRun, check_arguments,
                                      complete_run, count_chunk, fail_run, score_page, start_table_run)

DEFAULT_ROWS_PER_PART = 50_000     # one task per part: big enough that a task's overhead (~10 ms) is noise
_PART_VIEW = "__reviewflow_scored_part"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class PartSpec:
    """One exported partition: where its rows are, their hash, and where its scored part goes."""
    index: int
    rows: int
    first_id: Any
    last_id: Any
    input_path: str
    input_sha256: str
    scored_path: str
    scratch: str          # the scratch URI (workers open it themselves)
    version: str          # the model version every row of the run is scored with
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


# --------------------------------------------------------------------------- 1. export


def export_parts(run: TableRun, scratch: Scratch, rows_per_part: int, blob_as_utf8: bool,
                 max_error: float | None = None) -> list[PartSpec]:
    """Write the run's candidates, in id order, as Parquet parts of ``rows_per_part`` rows. -> the parts, in order.

    Two reads, so that memory holds one part, never the whole table: first the candidates' ids alone, sorted, cut
    into ranges of ``rows_per_part``; then each range's (id, text), sorted within the range (its id bounds are
    pushed into DuckDB's scan). One sorted read of (id, text) would sort every text at once: 2.4 GB of committer
    memory for 1M IMDb reviews (benchmarks/scale.py), against 1.2 GB for the one-process path."""
    T, ID = quote_ident(run.table), quote_ident(run.id_col)
    folder = run_folder(scratch, run.db_path, run.table, run.version)
    parts: list[PartSpec] = []
    with run.connect() as con:
        if run.is_blob and blob_as_utf8:
            refuse_invalid_utf8(con, run.table, run.id_col, run.text_col, run.stale, run.params)
        ids = con.sql(f"SELECT {ID} AS id FROM {T} WHERE {run.candidate} ORDER BY {ID}",
                      params=run.params).to_arrow_table().column("id")
        for lo in range(0, len(ids), rows_per_part):
            first, last = ids[lo].as_py(), ids[min(lo + rows_per_part, len(ids)) - 1].as_py()
            rows = con.sql(f"SELECT {ID} AS id, {run.text} AS text FROM {T} WHERE {ID} >= ? AND {ID} <= ? AND "
                           f"{run.candidate} ORDER BY {ID}", params=[first, last] + run.params).to_arrow_table()
            parts.append(_write_part(run, scratch, folder, len(parts), rows, max_error))
    return parts


def _write_part(run: TableRun, scratch: Scratch, folder: str, index: int, rows: pa.Table,
                max_error: float | None = None) -> PartSpec:
    """Write one input part; its name is its content's hash (the same rows give the same file)."""
    import io

    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(rows, sink, compression="zstd")
    digest = hashlib.sha256(sink.getvalue()).hexdigest()
    path = scratch.under(folder, f"in-{digest[:24]}.parquet")
    scored = scratch.under(folder, f"scored-{digest[:24]}.parquet")
    if not scratch.exists(path):
        if scratch.write_parquet(rows, path) != digest:      # the same writer, the same bytes
            raise ScratchIntegrityError(f"writing partition {path} gave other bytes than its name says")
    ids = rows.column("id")
    return PartSpec(index=index, rows=rows.num_rows, first_id=ids[0].as_py(), last_id=ids[-1].as_py(),
                    input_path=path, input_sha256=digest, scored_path=scored, scratch=scratch.uri,
                    version=run.version, table=run.table, max_error=max_error)


# --------------------------------------------------------------------------- 2. score (on a worker)


def score_part(part: PartSpec, predictor: PredictorLike, threshold: float = 0.5) -> PartResult:
    """Score one part with ``predictor`` (which must be model ``part.version``) into its scored part.

    A scored part already there is reused after checking that it reads and was written by the same model: a
    rerun of a part is a no-op. Raises :class:`pipeline.score.writeback.ModelOutputError` for a broken model
    (nothing written) and :class:`ScratchIntegrityError` when the input part is not what was exported."""
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
    if scratch.exists(part.scored_path):
        data = scratch.read_bytes(part.scored_path)
        if _scored_part_ok(data, part):
            return PartResult(part.index, part.scored_path, hashlib.sha256(data).hexdigest(), True, worker,
                              time.perf_counter() - t0, **engine, peak_rss_mib=peak_rss_mib())
    rows = scratch.read_parquet(part.input_path, part.input_sha256)
    fake = TableRun(Path(""), part.table, "id", "text", part.version, False, 0.0, None)
    scored = score_page(fake, threshold, predictor, rows)
    sha = scratch.write_parquet(scored.out, part.scored_path,
                                metadata={"reviewflow.model": part.version,
                                          "reviewflow.input_sha256": part.input_sha256,
                                          "reviewflow.rows": str(part.rows),
                                          "reviewflow.max_error": max_error_tag(part.max_error)})
    return PartResult(part.index, part.scored_path, sha, False, worker, time.perf_counter() - t0, **engine,
                      peak_rss_mib=peak_rss_mib())


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


def _scored_part_ok(data: bytes, part: PartSpec) -> bool:
    """A scored part left by an earlier try: reusable when it parses and names this part's input, model and
    ``--max-error`` (a part scored before without the tag was scored without it)."""
    from pipeline.score.scratch import read_parquet_bytes

    try:
        meta = parquet_metadata(read_parquet_bytes(data, part.scored_path))
    except ScratchIntegrityError:
        return False
    return (meta.get("reviewflow.model") == part.version
            and meta.get("reviewflow.input_sha256") == part.input_sha256
            and meta.get("reviewflow.max_error", "") == max_error_tag(part.max_error))


# --------------------------------------------------------------------------- 3. merge (the committer)


@dataclass
class _Merged:
    hist: np.ndarray = field(default_factory=lambda: np.zeros(HIST_BINS, dtype=np.int64))
    parts: int = 0
    rows: int = 0            # rows the UPDATEs changed: each candidate once
    reused: int = 0
    workers: dict = field(default_factory=dict)     # worker -> its peak RSS (MiB) as last reported
    score_seconds: float = 0.0                      # summed over parts, on the workers
    merge_seconds: float = 0.0                      # the committer's merges, one after another
    export_seconds: float = 0.0
    profile: Profile = field(default_factory=Profile)

    def summary(self, parts: int) -> dict:
        """What the run's report says about the engine (see :class:`ScoreReport`.engine)."""
        return {"partitions": parts, "parts_merged": self.parts, "parts_reused": self.reused,
                "rows_merged": self.rows, "workers_seen": len(self.workers),
                "worker_peak_rss_mib": {w: round(m, 1) for w, m in sorted(self.workers.items()) if m is not None},
                "export_seconds": round(self.export_seconds, 3), "merge_seconds": round(self.merge_seconds, 3),
                "score_seconds_total": round(self.score_seconds, 3),
                "merge_rows_per_s": round(self.rows / self.merge_seconds, 1) if self.merge_seconds else None}


def merge_part(run: TableRun, report: ScoreReport, part: PartSpec, result: PartResult, merged: _Merged) -> int:
    """Write one scored part into the table: ONE transaction with the audit row's counts. -> rows updated.

    The UPDATE also says the part's id range (``BETWEEN first AND last``): a table stored in id order then
    skips every row group outside it (DuckDB's min/max zone maps), so a merge costs about the part, not the
    table (50,000 rows into a 4M-row table: 1.4 s without the range, ~0.45 s with it; benchmarks/scale.py)."""
    t0 = time.perf_counter()
    scored = Scratch(part.scratch).read_parquet(result.scored_path, result.scored_sha256)
    meta = parquet_metadata(scored)
    if (meta.get("reviewflow.model") != run.version or meta.get("reviewflow.input_sha256") != part.input_sha256
            or meta.get("reviewflow.max_error", "") != max_error_tag(part.max_error)):
        raise ScratchIntegrityError(f"scored part {result.scored_path} was not made from partition {part.index} "
                                    f"by model {run.version} with --max-error {part.max_error}; it is not merged")
    scores = scored.column("score")
    written = pc.fill_null(scores, np.nan).to_numpy(zero_copy_only=False)
    unknown = int(pc.sum(pc.equal(scored.column("label"), "unknown")).as_py() or 0)
    written = written[~np.isnan(written)]
    skipped = part.rows - scored.num_rows
    merged.profile.merge(_part_profile(scored))
    T, ID = quote_ident(run.table), quote_ident(run.id_col)
    with run.connect() as con:
        con.register(_PART_VIEW, scored)
        try:
            con.execute("BEGIN")
            updated = con.execute(
                f"UPDATE {T} SET sentiment_score = c.score, sentiment_label = c.label, sentiment_model = ?, "
                f"scored_at = now(), sentiment_coverage = c.coverage FROM {_PART_VIEW} AS c "
                f"WHERE {T}.{ID} = c.id AND {T}.{ID} BETWEEN ? AND ? AND {run.stale}",
                [run.version, part.first_id, part.last_id] + run.params).fetchall()[0][0]
            audit.add_progress(con, report.run_id, len(written), skipped, unknown)
            con.execute("COMMIT")
        finally:
            con.unregister(_PART_VIEW)
    count_chunk(report, written, unknown, skipped)
    report.chunks += 1
    merged.hist += np.histogram(written, bins=HIST_BINS, range=(0.0, 1.0))[0]
    merged.parts += 1
    merged.rows += int(updated)
    merged.reused += int(result.reused)
    merged.workers[result.worker] = result.peak_rss_mib
    merged.score_seconds += result.seconds
    merged.merge_seconds += time.perf_counter() - t0
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
              lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
    """The checks a run makes before it writes anything (arguments, table, columns and their types), made
    read-only and before a cluster is started for it: a typo costs a second, not a cluster start-up. The run
    makes them again under its claim."""
    from pipeline.core.duck import connection
    from pipeline.score.inputs import check_table

    db_path = check_arguments(db_path, table, id_col, text_col, threshold, rows_per_part=rows_per_part)
    with connection(db_path, read_only=True, timeout=lock_timeout) as con:
        check_table(con, db_path, table, id_col, text_col, blob_as_utf8)


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
    and yields each :class:`PartResult` as it finishes; each is merged at once. ``scratch`` is the scratch
    URI. Same checks, columns, audit row and report as :func:`pipeline.score.writeback.score_table`; the
    audit row also records the engine, the worker count and the partitions. ``max_error``: the ``--max-error``
    every part must be scored with (its predictor's ``max_error``; a part's metadata records it)."""
    db_path = check_arguments(db_path, table, id_col, text_col, threshold, rows_per_part=rows_per_part)
    space = Scratch(scratch)
    run = TableRun(db_path, table, id_col, text_col, str(version), rescore, lock_timeout, on_wait,
                   engine=dict(engine=engine, workers=workers, partitions=None))
    report = ScoreReport(run_id=audit.new_run_id(run_id), table=table, db_path=str(db_path), model=run.version,
                         threshold=threshold)
    with table_claim(db_path, table, lock_timeout, on_wait), Attached(db_path, timeout=lock_timeout,
                                                                      on_wait=on_wait) as run.attached:
        t0 = time.perf_counter()
        start_table_run(run, report, blob_as_utf8)
        try:
            merged = _export_score_merge(run, report, space, rows_per_part, blob_as_utf8, map_parts, progress,
                                         max_error)
        except BaseException as exc:
            fail_run(run, report, exc, t0)
            raise
        complete_run(run, report, merged.hist, t0, merged.profile)
    space.remove_tree(run_folder(space, db_path, table, run.version))
    space.remove_empty_parents(run_folder(space, db_path, table, run.version))
    return report


def _export_score_merge(run: TableRun, report: ScoreReport, space: Scratch, rows_per_part: int,
                        blob_as_utf8: bool, map_parts: MapParts, progress, max_error: float | None = None) -> _Merged:
    t0 = time.perf_counter()
    parts = export_parts(run, space, rows_per_part, blob_as_utf8, max_error)
    merged, done, by_index = _Merged(export_seconds=time.perf_counter() - t0), 0, {p.index: p for p in parts}
    _record_engine(run, report, parts, None)
    if progress is not None:
        progress(0, report.rows_to_score)
    for result in map_parts(parts):
        part = by_index.pop(result.index, None)
        if part is None:
            raise InputError(f"partition {result.index} was reported twice, or was never exported")
        merge_part(run, report, part, result, merged)
        if merged.parts == 1:
            report.coverage_rule = result.coverage_rule
            _record_engine(run, report, parts, result)
        done += part.rows
        if progress is not None:
            progress(min(done, report.rows_to_score), report.rows_to_score)
    if by_index:
        raise InputError(f"{len(by_index)} partition(s) were never scored: {sorted(by_index)[:10]}")
    report.engine = {"engine": run.engine.get("engine"), "workers": run.engine.get("workers")} | merged.summary(len(parts))
    return merged


def _record_engine(run: TableRun, report: ScoreReport, parts: list[PartSpec], first: PartResult | None) -> None:
    """The audit row's engine columns: the partitions planned and, once a part is in, its device and precision."""
    run.engine.update(partitions=len(parts))
    if first is not None:
        run.engine.update(device=first.device, precision=first.precision)
    with run.connect() as con:
        audit.record_engine(con, report.run_id, **{k: run.engine.get(k) for k in
                                                   ("engine", "workers", "partitions", "device", "precision")})
