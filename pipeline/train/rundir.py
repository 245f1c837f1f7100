"""A training run's directory: held by one process at a time, marked once registered, removed all at once.

The job keeps one run directory per training configuration (``pipeline.train.job.run_dir_for``), so that a
crashed run resumes where it stopped; these helpers make that safe when runs overlap or die half-way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.core.errors import TemporaryFailure
from pipeline.core.storage import read_json, write_json_atomic
from pipeline.train.config import REGISTERED


@contextlib.contextmanager
def run_lock(out_dir: str | Path):
    """Hold the run directory ``out_dir`` for this process, or fail at once.

    The lock is a ``filelock`` beside the directory (``.<name>.lock``; the OS releases it when a process
    dies, so a crash never leaves it held; the empty file stays, as deleting a lock file races its next
    user), with ``.<name>.owner`` saying which pid holds it. A second
    run of the same directory (the same training configuration) gets ``TemporaryFailure`` naming that
    pid: it must not share checkpoint files with the first; run it again once the first has finished and
    it reuses (registered model) or resumes (checkpoint) that work. Leftovers of an interrupted
    :func:`discard_run_dir` are swept here.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    owner = out_dir.parent / f".{out_dir.name}.owner"
    lock = FileLock(out_dir.parent / f".{out_dir.name}.lock", thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TemporaryFailure(f"run dir {out_dir} is in use by {_owner_of(owner)}; wait for that training to "
                               "finish, then run again (it reuses or resumes that work)") from None
    try:
        write_json_atomic(owner, {"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")})
        for aside in out_dir.parent.glob(f".{out_dir.name}.discarded-*"):
            shutil.rmtree(aside, ignore_errors=True)
        yield out_dir
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _owner_of(owner: Path) -> str:
    try:
        info = read_json(owner)
        return f"pid {info['pid']} on {info['host']} (since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def discard_run_dir(out_dir: str | Path) -> None:
    """Remove a run directory all at once: renamed aside first, so that a crash during the removal leaves
    a ``.discarded-*`` directory (swept by the next :func:`run_lock`), never a half-deleted run to resume."""
    out_dir = Path(out_dir)
    if not out_dir.exists():
        return
    aside = out_dir.with_name(f".{out_dir.name}.discarded-{os.getpid()}-{time.time_ns()}")
    os.rename(out_dir, aside)
    shutil.rmtree(aside, ignore_errors=True)


def registered_version(out_dir: str | Path) -> str | None:
    """The model version this run was registered as, if it was (``mark_registered``)."""
    try:
        return str(read_json(Path(out_dir) / REGISTERED)["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_registered(out_dir: str | Path, version: str) -> None:
    """Record that the run is registered as ``version`` (call :func:`discard_run_dir` next). A crash before
    the discard leaves the marker: a retry reuses ``version`` and the next run of this configuration
    discards the dir, instead of registering the same run twice."""
    write_json_atomic(Path(out_dir) / REGISTERED, {"version": version})
