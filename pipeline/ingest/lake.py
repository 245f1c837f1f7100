"""The Parquet lake: ``<root>/lake/reviews/dataset=<name>/part-*.parquet``.

Read side: ``list_datasets``, ``dataset_files``, ``open_dataset``, ``iter_batches``, ``read_table``.

Write side: a dataset only ever grows by whole part files, ``part-<utc timestamp>-<sha256[:12]>.parquet``
(zstd), each published by one rename. Writers stream rows into a hidden staging file under
``<wh>/.tmp/ingest/`` (same filesystem, outside the lake, so a crash never leaves debris in a
dataset folder); ``publish_part`` then takes the dataset's writer lock (a ``filelock.FileLock`` on
``<wh>/lake/reviews/.dataset=<lowercased name>.lock``), drops rows whose review_id the dataset already
holds and renames the file into place. Readers never lock: they see a part file whole or not at all,
and ignore hidden (``.``) files.

Dataset names are unique *ignoring case*: DuckDB identifiers are case-insensitive, so ``IMDB`` and
``imdb`` would share one ``<name>_scored`` table. Writing to a name that differs only by case from an
existing dataset is refused (``check_name_is_free``), never silently mapped onto it.

Scratch files of killed writers are swept by the next writer, never those of a live one: a staging
file is ``flock``-ed by its owner from the moment it gets its ``.stage-`` name until it is published
or deleted; the kernel drops that lock when the owner dies, however it dies (kill -9 included). So an
unlocked ``.stage-*`` file belongs to nobody and ``sweep_dead_staging`` removes it. A ``.part-*.tmp``
file in a dataset folder (written only under the dataset lock) is dead as soon as the lock is ours.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import filelock
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.core.config import Warehouse, validate_name
from pipeline.core.errors import InputError, NotFoundError, TemporaryFailure, naming_path
from pipeline.core.schema import LAKE_SCHEMA, to_lake_table
from pipeline.core.storage import sha256_file
from pipeline.ingest.dedupe import Deduper

PART_COMPRESSION = "zstd"
ROW_GROUP_BYTES = 32 << 20  # PartWriter buffers about this much before writing a row group
LOCK_TIMEOUT_S = 600.0      # a writer waits this long for a dataset's lock, then fails as a temporary failure
BORN_GRACE_S = 60.0         # a ``.new-*`` file younger than this may be a staging file being born


def list_datasets(wh: Warehouse) -> list[str]:
    if not wh.lake.exists():
        return []
    return sorted(p.name.split("=", 1)[1] for p in wh.lake.glob("dataset=*") if any(p.glob("*.parquet")))


def same_name_other_case(wh: Warehouse, name: str) -> str | None:
    """The existing dataset whose name equals ``name`` ignoring case but is spelled differently, if any."""
    wanted = name.lower()
    return next((other for other in list_datasets(wh) if other.lower() == wanted and other != name), None)


def check_name_is_free(wh: Warehouse, name: str) -> None:
    """Refuse a dataset name that differs only by case from an existing one (see module doc)."""
    other = same_name_other_case(wh, name)
    if other is not None:
        raise InputError(f"dataset {name!r} differs only by case from the existing dataset {other!r}; dataset "
                         f"names ignore case (DuckDB table names do), so add to it with --dataset {other}, "
                         f"or choose a different name; nothing was ingested")


def dataset_files(wh: Warehouse, name: str) -> list[str]:
    """The dataset's Parquet part files, sorted (temp files start with '.' and are never listed)."""
    d = wh.dataset_dir(name)
    files = sorted(str(p) for p in d.glob("*.parquet") if not p.name.startswith("."))
    if not files:
        other = same_name_other_case(wh, name)
        if other is not None:
            raise NotFoundError(f"dataset {name!r} not found; did you mean {other!r}? (dataset names ignore case "
                                f"but must be spelled as ingested)")
        known = ", ".join(list_datasets(wh)) or "none"
        raise NotFoundError(f"dataset {name!r} has no data in {d} (known datasets: {known}); run `reviewflow ingest` first")
    return files


def open_dataset(wh: Warehouse, name: str) -> ds.Dataset:
    """The dataset's part files as one Arrow dataset with the lake's schema: parts written before a column
    of ``LAKE_SCHEMA`` existed (``group_id``) read it as null."""
    return ds.dataset(dataset_files(wh, name), schema=LAKE_SCHEMA, format="parquet")


def iter_batches(wh: Warehouse, name: str, columns: Sequence[str] | None = None,
                 filter=None, batch_size: int = 8192) -> Iterator[pa.RecordBatch]:
    """Stream the dataset in record batches (memory does not grow with its size)."""
    yield from open_dataset(wh, name).to_batches(columns=list(columns) if columns else None,
                                                 filter=filter, batch_size=batch_size)


def read_table(wh: Warehouse, name: str, columns: Sequence[str] | None = None, filter=None) -> pa.Table:
    return open_dataset(wh, name).to_table(columns=list(columns) if columns else None, filter=filter)


def part_files(wh: Warehouse, name: str) -> list[str]:
    """Like ``dataset_files`` but an empty list (not an error) for a new dataset."""
    d = wh.dataset_dir(name)
    return sorted(str(p) for p in d.glob("*.parquet") if not p.name.startswith(".")) if d.is_dir() else []


@contextlib.contextmanager
def dataset_lock(wh: Warehouse, name: str, timeout: float | None = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Exclusive per-dataset writer lock (released on exit, or by the kernel if the process dies).

    One lock per name *ignoring case*, so two writers racing to create ``IMDB`` and ``imdb`` queue on
    the same lock and the second sees the first's dataset (``check_name_is_free``). ``timeout`` None
    waits forever; 0 tries once. Waiting longer than ``timeout`` raises ``TemporaryFailure``."""
    d = wh.dataset_dir(name)
    lock_path = d.parent / f".{d.name.lower()}.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(lock_path, timeout=-1 if timeout is None else timeout)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise TemporaryFailure(f"dataset {name!r} is locked by another writer for over {timeout:.0f}s; "
                               f"try again when it is done ({lock_path})") from None
    try:
        yield lock_path
    finally:
        lock.release()


def review_ids(files: Sequence[str]) -> pa.Array:
    """All review_ids in ``files`` (only that column is read)."""
    if not files:
        return pa.array([], pa.string())
    return ds.dataset(list(files), schema=LAKE_SCHEMA, format="parquet").to_table(
        columns=["review_id"]).column("review_id").combine_chunks()


class PartWriter:
    """Streams ``LAKE_SCHEMA`` batches into one zstd Parquet file, buffering ~32 MiB per row group (a batch or
    table without the optional columns gets them as nulls).

    Use it as a context manager: the file is closed and fsynced when the block ends, or deleted
    (``abort``) when the block, or the close itself, raises::

        with PartWriter(path) as writer:
            writer.write(batch)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._writer = pq.ParquetWriter(self.path, LAKE_SCHEMA, compression=PART_COMPRESSION)
        self._buf: list[pa.RecordBatch] = []
        self._nbytes = 0
        self.rows = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        if isinstance(batch, pa.Table):
            self._buf.extend(to_lake_table(batch).to_batches())
        else:
            self._buf.append(batch if batch.schema.equals(LAKE_SCHEMA) else
                             to_lake_table(pa.Table.from_batches([batch])).combine_chunks().to_batches()[0])
        self._nbytes += batch.nbytes
        self.rows += batch.num_rows
        if self._nbytes >= ROW_GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            with naming_path(self.path):        # Arrow reports a full disk without the file's name
                self._writer.write_table(pa.Table.from_batches(self._buf, schema=LAKE_SCHEMA),
                                         row_group_size=1 << 30)
            self._buf, self._nbytes = [], 0

    def close(self) -> None:
        self.flush()
        with naming_path(self.path):
            self._writer.close()
            with open(self.path, "rb") as fh:
                os.fsync(fh.fileno())

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.close()
        except BaseException:
            self.abort()
            raise


def _staging_dir(wh: Warehouse) -> Path:
    d = wh.tmp / "ingest"
    d.mkdir(parents=True, exist_ok=True)
    return d


@dataclass
class StagingFile:
    """A hidden staging file ``<wh>/.tmp/ingest/.stage-<dataset>-*.parquet`` and the open descriptor that
    holds its ``flock`` (see module doc). ``release()`` deletes the file (if still there) and drops the lock."""

    path: Path
    lock_fd: int = field(repr=False)

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        if self.lock_fd >= 0:
            os.close(self.lock_fd)
            self.lock_fd = -1


def new_staging_file(wh: Warehouse, name: str) -> StagingFile:
    """A fresh, empty staging file for rows bound for dataset ``name``, locked before it is visible.

    It is created as ``.new-*`` (a name the sweeper leaves alone while young), locked, then renamed to
    ``.stage-*``: so every ``.stage-*`` file a sweeper sees unlocked is truly dead."""
    d = _staging_dir(wh)
    fd, born = tempfile.mkstemp(prefix=f".new-{validate_name(name, 'dataset name')}-", suffix=".parquet", dir=d)
    # fcntl, not filelock: the lock must be on this very descriptor before the file gets its .stage- name
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = d / (".stage-" + Path(born).name.removeprefix(".new-"))
    os.rename(born, path)
    return StagingFile(path, fd)


def _remove_if_unlocked(path: Path) -> bool:
    """Delete ``path`` if no process holds a flock on it (never opens FIFOs/devices, never follows links).

    fcntl, not filelock: filelock opens with O_CREAT, so it would recreate a file published meanwhile."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its owner is alive
        try:
            if os.lstat(path).st_ino != os.fstat(fd).st_ino:
                return False  # renamed away (published) and the name reused meanwhile
            path.unlink()
        except FileNotFoundError:
            return False  # published or released while we looked
        return True
    finally:
        os.close(fd)


def sweep_dead_staging(wh: Warehouse) -> list[str]:
    """Remove staging files left by dead writers (killed, crashed); returns their names.

    ``.stage-*`` files are removed when unlocked; ``.new-*`` files (a writer killed in the microseconds
    between creating and locking one) when unlocked and older than ``BORN_GRACE_S``."""
    d = wh.tmp / "ingest"
    if not d.is_dir():
        return []
    born_before = time.time() - BORN_GRACE_S
    swept = []
    for p in d.iterdir():
        if p.name.startswith(".new-"):
            with contextlib.suppress(OSError):
                if p.lstat().st_mtime >= born_before:
                    continue
        elif not p.name.startswith(".stage-"):
            continue
        if _remove_if_unlocked(p):
            swept.append(p.name)
    return swept


def _sweep_dead_rewrites(d: Path) -> None:
    """Remove ``.part-*.tmp`` files in dataset folder ``d``: only the dataset-lock holder writes them, and
    the caller holds that lock now, so any that exist were left by a writer that died."""
    if d.is_dir():
        for p in d.glob(".part-*.parquet.tmp"):
            p.unlink(missing_ok=True)


def sweep_dead_rewrites(wh: Warehouse, name: str) -> None:
    """``_sweep_dead_rewrites`` for dataset ``name`` if its lock is free right now (if not, a live writer
    is publishing and whoever takes the lock next sweeps)."""
    if not wh.dataset_dir(name).is_dir():
        return
    with contextlib.suppress(TemporaryFailure):
        with dataset_lock(wh, name, timeout=0):
            _sweep_dead_rewrites(wh.dataset_dir(name))


@dataclass
class PublishResult:
    part_file: Path | None     # None: nothing new, no file written
    rows_added: int
    duplicates_in_lake: int    # staged rows dropped at publish because the dataset already had them
    added_rows_by: pa.Table | None = None  # (split, label) of the rows added, only when re-filtered


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _part_name(path: Path, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"part-{now.strftime('%Y%m%dT%H%M%S%fZ')}-{sha256_file(path)[:12]}.parquet"


def _rewrite_without(pf: pq.ParquetFile, existing: pa.Array, d: Path) -> tuple[Path, pa.Table]:
    """Copy ``pf`` into a ``.part-*.tmp`` file in ``d`` without the rows whose review_id is in ``existing``;
    returns that file and the (split, label) of the rows kept."""
    fd, tmp = tempfile.mkstemp(prefix=".part-", suffix=".parquet.tmp", dir=d)
    os.close(fd)
    parts = []
    with PartWriter(tmp) as writer:
        for batch in pf.iter_batches(batch_size=8192):
            kept = batch.filter(pc.invert(pc.is_in(batch.column("review_id"), value_set=existing)))
            writer.write(kept)
            parts.append(kept.select(["split", "label"]))
    return Path(tmp), pa.Table.from_batches(parts)


def publish_part(wh: Warehouse, name: str, staged: str | os.PathLike, *,
                 known_files: Sequence[str] | None = None, lock_timeout: float | None = LOCK_TIMEOUT_S) -> PublishResult:
    """Publish a staged LAKE_SCHEMA Parquet file (already free of internal duplicates) into the dataset.

    Under the dataset lock: the name is checked against datasets spelled in another case (one may have
    appeared since the stager looked); rows whose review_id is in a part file the stager did not already
    dedupe against (all files when ``known_files`` is None) are dropped; what is left is renamed
    into ``dataset=<name>/part-<utc>-<sha>.parquet``. Nothing left -> no file, ``part_file`` None.
    ``staged`` is consumed (moved or deleted) in every case.
    """
    staged = Path(staged)
    d = wh.dataset_dir(name)
    try:
        with dataset_lock(wh, name, lock_timeout):
            check_name_is_free(wh, name)
            _sweep_dead_rewrites(d)
            known = set(known_files) if known_files is not None else set()
            existing = review_ids([f for f in part_files(wh, name) if f not in known])
            pf = pq.ParquetFile(staged)
            total = pf.metadata.num_rows
            dups = 0
            if len(existing) and total:
                ids = pf.read(columns=["review_id"]).column("review_id")
                dups = int(pc.sum(pc.is_in(ids, value_set=existing)).as_py() or 0)
            if dups == total:
                return PublishResult(None, 0, dups)
            d.mkdir(parents=True, exist_ok=True)
            src, by = staged, None
            if dups:  # another writer got some of these rows in first: rewrite without them
                src, by = _rewrite_without(pf, existing, d)
            target = d / _part_name(src)
            os.chmod(src, 0o644)  # mkstemp made it 0600; published data is readable like any other file
            os.replace(src, target)
            _fsync_dir(d)
            return PublishResult(target, total - dups, dups, by)
    finally:
        staged.unlink(missing_ok=True)


def write_part(wh: Warehouse, name: str, table: pa.Table) -> PublishResult:
    """Append ``table`` (``REVIEW_SCHEMA`` or ``LAKE_SCHEMA`` columns; a missing ``group_id`` is null) to the
    dataset: dedupe by review_id (first wins, as in ingest; an id reused for another review is refused),
    and against the lake, atomically. Convenience for small tables and tests; ingest streams."""
    table = Deduper(f"table for dataset {name!r}", "table").first_rows(to_lake_table(table))
    scratch = new_staging_file(wh, name)
    try:
        with PartWriter(scratch.path) as writer:
            writer.write(table)
        return publish_part(wh, name, scratch.path, known_files=None)
    finally:
        scratch.release()


def split_counts(wh: Warehouse, name: str) -> dict[str, int]:
    """Rows per split in the dataset (a null split is counted as ``"none"``); reads only that column."""
    col = open_dataset(wh, name).to_table(columns=["split"]).column("split")
    return {(r["values"] if r["values"] is not None else "none"): int(r["counts"])
            for r in pc.value_counts(col).to_pylist()}
