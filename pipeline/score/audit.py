"""The audit table ``sentiment_runs``: one row per scoring run, and finding the runs that died.

A row is ``running`` from the start of a run, then ``completed``, or ``failed`` with the error. Its
``run_id`` is the Prefect flow-run id when the run has one (the flow passes it in; a task retry inside
the same flow run continues the same row), else a fresh random id. ``host`` and ``pid`` say which process
ran it. ``rows_unknown`` counts the rows the model could not read (labelled ``'unknown'``, no score).

The table migrates itself: :func:`ensure_table` creates it and adds columns introduced since
(``ALTER TABLE ... ADD COLUMN IF NOT EXISTS``), so a database written by an older version keeps its rows.

A run killed by a signal cannot write ``failed`` itself; the next run marks it, without ever guessing
from a bare PID (a PID is reused once its process is gone) or reading ``/proc``:

* rows of the table being scored: the new run holds the table's claim (:mod:`pipeline.score.claim`),
  which a live run of it would hold until its row is final, so every other ``running`` row of the
  table is certainly dead;
* rows of other tables (their claims are not ours to take): ``owner`` is the run's process's owner tag
  (:mod:`pipeline.core.liveness`), and that process holds its owner lock in the database's folder for as
  long as it holds a table's claim there. A row of this host whose owner's lock is free (or gone) is dead;
  a row of another host, or one written before the ``owner`` column existed (``pid`` only), is left alone
  until a run of its own table marks it.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from pipeline.core import liveness

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
#: columns added after the first release, in order; an older table gains them on its next scoring run
RUNS_MIGRATIONS = (
    f"ALTER TABLE {RUNS_TABLE} ADD COLUMN IF NOT EXISTS rows_unknown BIGINT DEFAULT 0",
    f"ALTER TABLE {RUNS_TABLE} ADD COLUMN IF NOT EXISTS engine VARCHAR",       # local | dask
    f"ALTER TABLE {RUNS_TABLE} ADD COLUMN IF NOT EXISTS workers INTEGER",      # processes that scored
    f"ALTER TABLE {RUNS_TABLE} ADD COLUMN IF NOT EXISTS partitions INTEGER",   # dask: Parquet parts planned
    f"ALTER TABLE {RUNS_TABLE} ADD COLUMN IF NOT EXISTS device VARCHAR",       # cpu | cuda | cuda:N
    f"ALTER TABLE {RUNS_TABLE} ADD COLUMN IF NOT EXISTS precision VARCHAR",    # fp32 | int8 | bf16
    f"ALTER TABLE {RUNS_TABLE} ADD COLUMN IF NOT EXISTS owner VARCHAR",        # the process's owner tag
    f"ALTER TABLE {RUNS_TABLE} ADD COLUMN IF NOT EXISTS max_error DOUBLE",     # --max-error (NULL: off)
)


def ensure_table(con) -> None:
    """Create ``sentiment_runs`` if missing and add any column it lacks (inside the caller's transaction)."""
    con.execute(RUNS_DDL)
    for statement in RUNS_MIGRATIONS:
        con.execute(statement)


def new_run_id(flow_run_id: str | None = None) -> str:
    """The audit row's key: the Prefect flow-run id when there is one, else a fresh random id."""
    return str(flow_run_id) if flow_run_id else uuid.uuid4().hex[:16]


def start_run(con, run_id: str, table: str, model: str, rows_skipped: int) -> None:
    """Record the run as ``running`` (inside the caller's transaction), owned by this process (its owner tag:
    the caller holds its owner lock in the database's folder, see :mod:`pipeline.score.claim`). The same
    ``run_id`` again (a retry of the flow run's task) continues its row: rows scored so far are kept, the
    skipped rows recounted."""
    con.execute(
        f"INSERT INTO {RUNS_TABLE} (run_id, table_name, model, rows_scored, rows_skipped, started_at, status, host, "
        f"pid, owner) VALUES (?, ?, ?, 0, ?, now(), 'running', ?, ?, ?) ON CONFLICT (run_id) DO UPDATE SET "
        f"table_name = excluded.table_name, model = excluded.model, rows_skipped = excluded.rows_skipped, "
        f"status = 'running', finished_at = NULL, error = NULL, host = excluded.host, pid = excluded.pid, "
        f"owner = excluded.owner",
        [run_id, table, model, rows_skipped, socket.gethostname(), os.getpid(), liveness.owner_tag()])


def record_engine(con, run_id: str, *, engine: str, workers: int | None = None, partitions: int | None = None,
                  device: str | None = None, precision: str | None = None, max_error: float | None = None) -> None:
    """Say how the run scores: ``engine`` (``local``: this process; ``dask``: partitions on a Dask cluster), the
    number of worker processes, the partitions planned, the model's device and precision, and the stated error
    rate its unsure texts were left ``unknown`` at (``--max-error``; NULL: off)."""
    con.execute(f"UPDATE {RUNS_TABLE} SET engine = ?, workers = ?, partitions = ?, device = ?, precision = ?, "
                f"max_error = ? WHERE run_id = ?", [engine, workers, partitions, device, precision, max_error, run_id])


def add_progress(con, run_id: str, scored: int, skipped: int, unknown: int = 0) -> None:
    """Add a committed chunk's counts to the run's row (inside the chunk's transaction)."""
    con.execute(f"UPDATE {RUNS_TABLE} SET rows_scored = rows_scored + ?, rows_skipped = rows_skipped + ?, "
                f"rows_unknown = coalesce(rows_unknown, 0) + ? WHERE run_id = ?", [scored, skipped, unknown, run_id])


def finish_run(con, run_id: str, error: str | None = None) -> None:
    """``completed``, or ``failed`` with ``error`` (one line)."""
    con.execute(f"UPDATE {RUNS_TABLE} SET status = ?, finished_at = now(), error = ? WHERE run_id = ?",
                ["failed" if error is not None else "completed", error, run_id])


def mark_dead_runs(con, claimed_table: str, own_run_id: str, db_dir: str | os.PathLike) -> None:
    """Mark ``failed`` the ``running`` rows whose process is gone (see the module docstring). Call it while
    holding ``claimed_table``'s claim; ``db_dir`` is the database file's folder (where owners hold their lock;
    the lock files of dead owners there are removed too)."""
    rows = con.execute(f"SELECT run_id, table_name, owner FROM {RUNS_TABLE} "
                       f"WHERE status = 'running' AND run_id <> ?", [own_run_id]).fetchall()
    for run_id, table, owner in rows:
        if table == claimed_table:
            why = f"its claim on table {table!r} was free"
        elif owner and not liveness.owner_alive(owner, Path(db_dir)):
            why = f"its process {owner} no longer holds its owner lock in {Path(db_dir) / liveness.OWNERS}"
        else:
            continue
        con.execute(f"UPDATE {RUNS_TABLE} SET status = 'failed', finished_at = now(), error = ? WHERE run_id = ?",
                    [f"interrupted: the run ended without finishing (killed?): {why}", run_id])
    liveness.sweep_locks(db_dir)       # the lock files of dead owners (this process's own link stays)
