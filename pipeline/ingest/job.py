"""Ingest a review source into the Parquet lake: read -> validate -> clean -> dedupe -> publish.

Two steps, so an orchestrator can retry the first (which may read a URL) on its own:

* ``stage()`` streams the source (``pipeline.ingest.readers``) batch by batch, drops rows with missing or
  whitespace-only text, drops repeats of a review_id (``pipeline.ingest.dedupe``: a harmless duplicate
  is dropped, an id reused for another review is an error naming the ids), drops ids the dataset
  already holds, and writes what is
  left to a hidden staging file. Any error (bad row, bad tarball member, network) deletes the
  staging file: the lake is never touched before everything has been read and validated. It first
  sweeps staging files of dead ingests (``pipeline.ingest.lake.sweep_dead_staging``) and refuses a dataset
  name that differs only by case from an existing one.
* ``publish()`` moves the staging file into the dataset as one new part file, atomically, under
  the dataset's writer lock (``pipeline.ingest.lake.publish_part``), re-checking ids against parts that
  appeared while staging ran. Nothing new -> no part file.

``ingest()`` does both. Memory stays near one batch (plus the set of review ids), whatever the
source size.

Many files (a folder of CSV/TSV/JSON lines/Parquet files, not an aclImdb tree, see ``folder_files``; or an
inbox): ``stage_and_publish`` stages several at once (on any executor: threads, a Prefect task runner) and
publishes each one as soon as it and every file before it are staged, in file order, one part file per file,
serialized. Staging dedupes against the lake as it was when it started; ``publish`` re-checks against the
parts published since, so the lake ends up as it would file by file. A file that fails is recorded and
the others go on (their publishes stay); ``files_failed`` turns the failures into one error naming the files.
"""

from __future__ import annotations

import collections
import datetime as dt
import os
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import InputError, ReviewflowError, TemporaryFailure
from pipeline.core.schema import LAKE_SCHEMA
from pipeline.core.userfiles import folder_entries
from pipeline.ingest import lake
from pipeline.ingest.columns import ColumnMap
from pipeline.ingest.dedupe import Deduper
from pipeline.ingest.detect import COMPRESSION_SUFFIXES, FILE_KINDS, Source, detect
from pipeline.ingest.labels import label_name
from pipeline.ingest.readers import read_source
from pipeline.ingest.readers.base import ReadStats

DROP_REASONS = ("missing_text", "empty_text")  # text null / text empty or whitespace only


@dataclass
class IngestReport:
    """What one ingest did. ``by_split_label`` rows: {split, label, rows, added} where ``rows`` are
    the distinct usable rows in the source and ``added`` those new to the lake."""

    dataset: str
    source: str
    kind: str
    rows_read: int = 0
    rows_added: int = 0
    duplicates: int = 0            # duplicates_in_lake + duplicates_in_source
    duplicates_in_lake: int = 0    # review_id already in the dataset
    duplicates_in_source: int = 0  # review_id repeated inside this source (first kept)
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    replaced_utf8: int = 0         # rows whose invalid UTF-8 bytes were replaced with U+FFFD (kept)
    skipped: list[str] = field(default_factory=list)  # first folder entries / tar members not read, "name (why)"
    skipped_total: int = 0         # how many were not read (FIFOs, devices, links...), all of them
    by_split_label: list[dict] = field(default_factory=list)
    part_file: str | None = None
    columns: dict[str, str] = field(default_factory=dict)  # role -> source column (files)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        dropped = ", ".join(f"{k}={v}" for k, v in self.dropped.items() if v) or "none"
        return (f"{self.dataset}: read {self.rows_read}, added {self.rows_added}, duplicates {self.duplicates} "
                f"(in lake {self.duplicates_in_lake}, in source {self.duplicates_in_source}), dropped {dropped}, "
                f"utf-8 repaired {self.replaced_utf8}, skipped {skipped_note(self.skipped, self.skipped_total)}")


def skipped_note(skipped: list[str], total: int) -> str:
    """``"2 entries not read: train/pos/3_9.txt (FIFO), x (socket)"`` (``"none"`` when nothing was skipped)."""
    if not total:
        return "none"
    more = f", and {total - len(skipped)} more" if total > len(skipped) else ""
    return f"{total} entries not read: {', '.join(skipped)}{more}"


@dataclass
class StagedIngest:
    """The result of ``stage()``: a hidden Parquet file of new rows (or None) and the counts."""

    dataset: str
    source: Source
    staged_path: Path | None
    known_files: list[str]
    rows_read: int
    rows_staged: int
    duplicates_in_lake: int
    duplicates_in_source: int
    dropped: dict[str, int]
    replaced_utf8: int
    skipped: list[str]
    skipped_total: int
    counts: dict[tuple, list[int]]  # (split, label) -> [rows, staged]
    columns: dict[str, str]
    started: float
    scratch: lake.StagingFile | None = None  # holds staged_path's lock until discard()

    def discard(self) -> None:
        """Delete the staging file if it was not published, and drop its lock."""
        if self.scratch is not None:
            self.scratch.release()


def _check_dataset(dataset: str) -> str:
    try:
        return validate_name(dataset, "dataset name")
    except ValueError as exc:
        raise InputError(str(exc)) from None


def _column_map(src: Source, mapping: dict) -> ColumnMap:
    """The ``--*-col``/``--split`` options as a ``ColumnMap``; refused for aclImdb sources, which have no columns."""
    if src.kind.startswith("aclimdb") and any(v is not None for v in mapping.values()):
        used = ", ".join("--" + k.replace("_", "-") for k, v in mapping.items() if v is not None)
        raise InputError(f"{used} apply to CSV/JSON/Parquet files only; an aclImdb source takes ids, labels, "
                         f"ratings and splits from its folder and file names", path=src.location)
    return ColumnMap(**mapping)


def _drop_textless(batch: pa.RecordBatch, dropped: dict[str, int]) -> pa.RecordBatch:
    """``batch`` without rows whose text is null or blank, each counted under its ``DROP_REASONS`` entry."""
    text = batch.column("text")
    missing = pc.is_null(text)
    blank = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), False)
    dropped["missing_text"] += int(pc.sum(missing).as_py() or 0)
    dropped["empty_text"] += int(pc.sum(blank).as_py() or 0)
    return batch.filter(pc.invert(pc.or_(missing, blank)))


def _count_by_split_label(counts: dict[tuple, list[int]], batch: pa.RecordBatch, new: pa.Array) -> None:
    """Add ``batch``'s rows to ``counts[(split, label)] = [rows, new rows]``."""
    grouped = pa.table({"split": batch.column("split"), "label": batch.column("label"),
                        "new": pc.cast(new, pa.int64())}).group_by(["split", "label"]).aggregate(
        [("new", "count"), ("new", "sum")])
    for s, lab, n, k in zip(*(grouped.column(c).to_pylist() for c in ("split", "label", "new_count", "new_sum"))):
        c = counts.setdefault((s, lab), [0, 0])
        c[0] += n
        c[1] += k


class _Stager:
    """The per-batch rules of ``stage()``: drop textless rows, repeats and ids already in the lake; count
    what was dropped; hand back the new rows as LAKE_SCHEMA rows (``source``, ``ingested_at`` added)."""

    def __init__(self, src: Source, lake_ids: set[str]):
        self.src, self.lake_ids = src, lake_ids
        self.now = pa.scalar(dt.datetime.now(dt.timezone.utc), LAKE_SCHEMA.field("ingested_at").type)
        self.dropped = dict.fromkeys(DROP_REASONS, 0)
        self.deduper = Deduper(src.location, src.kind)
        self.dup_lake = 0
        self.counts: dict[tuple, list[int]] = {}  # (split, label) -> [rows, staged]

    def new_rows(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        batch = _drop_textless(batch, self.dropped)
        if batch.num_rows == 0:
            return None
        batch = self.deduper.first_rows(batch)
        new = pa.array([rid not in self.lake_ids for rid in batch.column("review_id").to_pylist()], pa.bool_())
        _count_by_split_label(self.counts, batch, new)
        n_new = int(pc.sum(pc.cast(new, pa.int64())).as_py() or 0)
        self.dup_lake += batch.num_rows - n_new
        if n_new == 0:
            return None
        if n_new < batch.num_rows:
            batch = batch.filter(new)
        m = batch.num_rows
        added = {"source": pa.array([self.src.location] * m, pa.string()), "ingested_at": pa.repeat(self.now, m)}
        return pa.RecordBatch.from_arrays([added[n] if n in added else batch.column(n) for n in LAKE_SCHEMA.names],
                                          schema=LAKE_SCHEMA)


def stage(wh: Warehouse, source: str, dataset: str, *, text_col: str | None = None, label_col: str | None = None,
          id_col: str | None = None, rating_col: str | None = None, split_col: str | None = None,
          split: str | None = None, group_col: str | None = None, progress: bool = True,
          within: str | os.PathLike | None = None) -> StagedIngest:
    """Read and validate ``source`` completely into a staging file (see module doc). ``within``: the folder
    ``source`` was found in (a folder of files, the inbox): then it must be a regular file reached from there
    without a link (``pipeline.core.userfiles``); without it, a path the user typed is resolved once."""
    started = time.monotonic()
    _check_dataset(dataset)
    src = detect(source, within=within)
    cols = _column_map(src, dict(text_col=text_col, label_col=label_col, id_col=id_col, rating_col=rating_col,
                                 split_col=split_col, split=split, group_col=group_col))
    wh.ensure()
    lake.sweep_dead_staging(wh)
    lake.sweep_dead_rewrites(wh, dataset)
    lake.check_name_is_free(wh, dataset)
    known = lake.part_files(wh, dataset)
    stager = _Stager(src, set(lake.review_ids(known).to_pylist()))  # one hash set; cheaper than pc.is_in per batch
    stats = ReadStats()
    scratch = lake.new_staging_file(wh, dataset)
    try:
        with lake.PartWriter(scratch.path) as writer:
            for batch in read_source(src, cols, stats, progress=progress):
                if (rows := stager.new_rows(batch)) is not None:
                    writer.write(rows)
    except BaseException:
        scratch.release()
        raise
    if writer.rows == 0:
        scratch.release()
    return StagedIngest(dataset=dataset, source=src, staged_path=scratch.path if writer.rows else None,
                        known_files=known, rows_read=stats.rows_read, rows_staged=writer.rows,
                        duplicates_in_lake=stager.dup_lake, duplicates_in_source=stager.deduper.repeats,
                        dropped=stager.dropped, replaced_utf8=stats.replaced_utf8, skipped=list(stats.skipped),
                        skipped_total=stats.skipped_total, counts=stager.counts, columns=dict(stats.columns),
                        started=started, scratch=scratch if writer.rows else None)


def publish(wh: Warehouse, staged: StagedIngest) -> IngestReport:
    """Publish a staged ingest as one new part file (or none) and build its report."""
    counts = {k: list(v) for k, v in staged.counts.items()}
    part_file, added, dup_lake = None, 0, staged.duplicates_in_lake
    if staged.staged_path is not None:
        res = lake.publish_part(wh, staged.dataset, staged.staged_path, known_files=staged.known_files)
        part_file, added = res.part_file, res.rows_added
        dup_lake += res.duplicates_in_lake
        if res.duplicates_in_lake:  # another writer published some of our rows first: recount
            for v in counts.values():
                v[1] = 0
            if res.added_rows_by is not None and res.added_rows_by.num_rows:
                g = res.added_rows_by.group_by(["split", "label"]).aggregate([([], "count_all")])
                for s, lab, n in zip(*(g.column(c).to_pylist() for c in ("split", "label", "count_all"))):
                    counts.setdefault((s, lab), [0, 0])[1] = n
    by = [{"split": s if s is not None else "(none)", "label": label_name(lab), "rows": v[0], "added": v[1]}
          for (s, lab), v in sorted(counts.items(), key=lambda kv: (str(kv[0][0]), {1: 0, 0: 1}.get(kv[0][1], 2)))]
    return IngestReport(
        dataset=staged.dataset, source=staged.source.location, kind=staged.source.kind, rows_read=staged.rows_read,
        rows_added=added, duplicates=dup_lake + staged.duplicates_in_source, duplicates_in_lake=dup_lake,
        duplicates_in_source=staged.duplicates_in_source, dropped=dict(staged.dropped),
        replaced_utf8=staged.replaced_utf8, skipped=list(staged.skipped), skipped_total=staged.skipped_total,
        by_split_label=by, part_file=str(part_file) if part_file else None,
        columns=staged.columns, seconds=round(time.monotonic() - staged.started, 3))


def ingest(wh: Warehouse, source: str, dataset: str, *, text_col: str | None = None, label_col: str | None = None,
           id_col: str | None = None, rating_col: str | None = None, split_col: str | None = None,
           split: str | None = None, group_col: str | None = None, progress: bool = True,
           within: str | os.PathLike | None = None) -> IngestReport:
    """Ingest ``source`` (aclImdb folder / tarball / URL, CSV, JSONL, Parquet) into ``dataset``; ``within``
    as in :func:`stage`.

    Example::

        report = ingest(Warehouse.from_env(), "reviews.csv", "shop", text_col="body", label_col="stars_ok",
                        group_col="product_id")
        print(report.rows_added, report.dropped)

    ``group_col`` names what each review is about (a movie, a product); it is stored as ``group_id`` for
    ``prepare --split-by group``. A group is metadata, not content: ids and the duplicate check use text,
    label, rating and split only, so a repeated review keeps its first row's group, and a review already
    in the lake keeps the group (or null) it was ingested with.

    Raises ``InputError`` (file / row / column named) and leaves the lake unchanged on bad input.
    """
    staged = stage(wh, source, dataset, text_col=text_col, label_col=label_col, id_col=id_col,
                   rating_col=rating_col, split_col=split_col, split=split, group_col=group_col,
                   progress=progress, within=within)
    try:
        return publish(wh, staged)
    finally:
        staged.discard()


# ------------------------------------------------------------------------------------------ many files
def _review_file_name(name: str) -> bool:
    """A name with a CSV/TSV/JSON lines/Parquet suffix (optionally compressed), not hidden."""
    name = name.lower()
    for suf in COMPRESSION_SUFFIXES:
        if name.endswith(suf):
            name = name[: -len(suf)]
            break
    return not name.startswith(".") and Path(name).suffix in FILE_KINDS


def folder_files(source: str) -> tuple[list[str], list[str]] | None:
    """(review files, "name (why)" of entries left out) of a folder of CSV/TSV/JSON lines/Parquet files, in
    name order; None for every other source (a file, a URL, an aclImdb folder: one source, read as today).

    The folder the user named may be reached through a link (resolved once, like any path typed on the command
    line); its entries are never followed. Only its own entries count (no sub-folders); an entry that is not a
    regular file (a symbolic link wherever it points, a FIFO, socket, device or folder) is left out and named,
    never opened (``pipeline.core.userfiles.folder_entries``). Each file is then read confined to this folder
    (:func:`ingest_files`, ``within``). A folder without review files is left to the aclImdb reader, whose
    error says what a folder should hold."""
    root = Path(source).expanduser()
    if not root.is_dir():
        return None
    if any((base / split).is_dir() for base in (root / "aclImdb", root) for split in ("train", "test")):
        return None
    root = root.resolve()
    files, left_out = [], []
    for entry in folder_entries(root):
        if entry.name.startswith("."):
            continue
        if not entry.regular:
            link = stat.S_ISLNK(entry.lstat.st_mode)
            left_out.append(f"{entry.name} ({entry.what}{', not followed' if link else ''})")
        elif not _review_file_name(entry.name):
            left_out.append(f"{entry.name} (not a .csv/.tsv/.jsonl/.ndjson/.json/.parquet file)")
        else:
            files.append(str(entry.path))
    return (files, left_out) if files else None


@dataclass
class FileOutcome:
    """One file of a many-file ingest: its report (a dict, as the flows return it) or what failed."""
    path: str
    report: dict | None = None
    error: BaseException | None = None


def stage_and_publish(files: Iterable[str], submit_stage: Callable[[str], Any],
                      publish_one: Callable[[StagedIngest], dict], window: int = 1) -> list[FileOutcome]:
    """Stage ``files``, at most ``window`` at once (``submit_stage(path)`` returns a future: anything with
    ``.result()``), and publish each one with ``publish_one`` (which must discard the staging file) as soon as
    it and every file before it are staged, in order. Failures are recorded per file; the others go on."""
    todo, pending, out = iter(files), collections.deque(), []

    def fill() -> None:
        while len(pending) < max(1, window) and (path := next(todo, None)) is not None:
            pending.append((path, submit_stage(path)))

    fill()
    try:
        while pending:
            path, future = pending.popleft()
            try:
                staged = future.result()
            except Exception as exc:  # noqa: BLE001 - a bad file must not stop the others
                out.append(FileOutcome(path, error=exc))
                fill()
                continue
            fill()                      # the next files stage while this one publishes
            try:
                out.append(FileOutcome(path, report=publish_one(staged)))
            except Exception as exc:  # noqa: BLE001
                out.append(FileOutcome(path, error=exc))
    finally:
        for _, future in pending:       # interrupted: no staging file outlives us (the sweeper is the backstop)
            try:
                future.result().discard()
            except BaseException:  # noqa: BLE001
                pass
    return out


def ingest_files(wh: Warehouse, files: list[str], dataset: str, *, workers: int = 1, progress: bool = False,
                 **mapping) -> list[FileOutcome]:
    """``ingest`` of many files without an orchestrator: ``workers`` threads stage, this thread publishes.
    The files are entries of a folder (``folder_files``): each is read confined to its own folder
    (``stage(within=...)``), so one that became a link or a FIFO since the listing is refused, not followed."""
    def publish_one(staged: StagedIngest) -> dict:
        try:
            return publish(wh, staged).to_dict()
        finally:
            staged.discard()

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="ingest") as ex:
        return stage_and_publish(files, lambda f: ex.submit(stage, wh, f, dataset, progress=progress,
                                                            within=Path(f).parent, **mapping),
                                 publish_one, workers)


def files_failed(outcomes: list[FileOutcome]) -> Exception | None:
    """One error naming every file that failed, and saying the others were ingested; None if none failed.
    ``TemporaryFailure`` if any failure may go away by itself, ``InputError`` if all are the user's to fix."""
    failed = [o for o in outcomes if o.error is not None]
    if not failed:
        return None
    done = len(outcomes) - len(failed)
    listed = "; ".join(f"{Path(o.path).name}: {o.error}" for o in failed)
    msg = (f"{len(failed)} of {len(outcomes)} files could not be ingested ({listed}); the other {done} were "
           f"ingested and stay. Fix the files named and ingest again: rows already in the lake are skipped")
    if any(isinstance(o.error, TemporaryFailure) or getattr(o.error, "transient", False) for o in failed):
        return TemporaryFailure(msg)
    if all(isinstance(o.error, ReviewflowError) for o in failed):
        return InputError(msg)
    return RuntimeError(msg)


def combine_reports(dataset: str, source: str, outcomes: list[FileOutcome], left_out: list[str],
                    seconds: float) -> dict:
    """The reports of a many-file ingest as one report dict (the keys of ``IngestReport``, summed), plus
    ``files`` (each file's report or error) and ``part_files``."""
    reports = [o.report for o in outcomes if o.report is not None]
    total = IngestReport(dataset=dataset, source=source, kind=f"folder ({len(outcomes)} files)",
                         skipped=list(left_out), skipped_total=len(left_out), seconds=round(seconds, 3))
    by: dict[tuple, list[int]] = {}
    for r in reports:
        for k in ("rows_read", "rows_added", "duplicates", "duplicates_in_lake", "duplicates_in_source",
                  "replaced_utf8", "skipped_total"):
            setattr(total, k, getattr(total, k) + r[k])
        for k, v in r["dropped"].items():
            total.dropped[k] = total.dropped.get(k, 0) + v
        total.skipped += [f"{Path(r['source']).name}: {s}" for s in r["skipped"]]
        total.columns.update(r["columns"])
        for row in r["by_split_label"]:
            c = by.setdefault((row["split"], row["label"]), [0, 0])
            c[0], c[1] = c[0] + row["rows"], c[1] + row["added"]
    order = {"pos": 0, "neg": 1}
    total.by_split_label = [{"split": s, "label": lab, "rows": v[0], "added": v[1]}
                            for (s, lab), v in sorted(by.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 2)))]
    files = [{"file": o.path, **({"error": str(o.error)} if o.error is not None else
                                 {"rows_read": o.report["rows_read"], "rows_added": o.report["rows_added"],
                                  "part_file": o.report["part_file"]})} for o in outcomes]
    return total.to_dict() | {"files": files, "part_files": [r["part_file"] for r in reports if r["part_file"]]}
