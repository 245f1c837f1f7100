"""The table *claim*: one scoring run per (DuckDB file, table) at a time.

A run takes an OS file lock on ``<db>.score-<sha1(table)[:16]>.lock`` beside the database file (``filelock``)
and holds it to the end, its audit row's last update included. The OS drops the lock when the process
dies, even by ``kill -9``, so the claim never stays stuck, and a claim that is free means no run of the
table is alive. The lock file itself is left in place (empty; harmless).

While it holds a claim, the process also holds its owner lock in the database's folder
(:func:`pipeline.core.liveness.holding`): its audit rows name it by its owner tag, and a run of another
table tells from that lock whether the process is still alive (:func:`pipeline.score.audit.mark_dead_runs`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock
from filelock import Timeout as FileLockTimeout

from pipeline.core import liveness
from pipeline.core.duck import LockTimeout


def claim_path(db_path: str | os.PathLike, table: str) -> Path:
    """The lock file that makes one scoring run per (database file, table) at a time."""
    digest = hashlib.sha1(table.encode("utf-8")).hexdigest()[:16]
    return Path(f"{db_path}.score-{digest}.lock")


@contextlib.contextmanager
def table_claim(db_path: Path, table: str, timeout: float, on_wait: Callable[[str], None] | None) -> Iterator[None]:
    """Hold the table's claim; a second run says that it waits, waits up to ``timeout`` seconds, then
    raises :class:`pipeline.core.duck.LockTimeout` (a temporary failure)."""
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
        with liveness.holding(Path(db_path).parent):
            yield
    finally:
        lock.release()
