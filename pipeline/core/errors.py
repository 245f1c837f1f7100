"""Errors that carry enough context (file, row, column) for a user to fix their input.

The CLI turns each into one line on stderr and an exit code, without a traceback (``--debug`` keeps it):

* :class:`ReviewflowError` and its subclasses: exit code 2 (the user can act on it);
* :class:`TemporaryFailure` (a lock held too long, a network hiccup): exit code 75 (``EX_TEMPFAIL``),
  so a scheduler knows that the same command may succeed later;
* an operating-system failure is neither a bug nor a traceback: :func:`classify_os_error` turns a full disk or
  quota (ENOSPC, EDQUOT) and a descriptor limit (EMFILE, ENFILE) into exit 75, a read-only file system, a
  refused permission or a file-size limit (EROFS, EACCES, EPERM, EFBIG) into exit 2, each one line naming the
  path (writers attach it with :func:`naming_path`) and, for a full disk, the free space left there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path
from typing import Iterator

EXIT_USER_ERROR = 2
EXIT_TEMPORARY = 75     # sysexits.h EX_TEMPFAIL: try again later


class ReviewflowError(Exception):
    """Base class: a problem the user can act on. The CLI prints it without a traceback."""

    exit_code = EXIT_USER_ERROR


class InputError(ReviewflowError, ValueError):
    """Bad input data or options. Names the file, and where known the row and column.

    Also a ``ValueError``, so code that validated with ``ValueError`` before keeps working."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 column: str | None = None):
        where = []
        if path is not None:
            where.append(f"file {path}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        self.path, self.row, self.column = path, row, column
        super().__init__(f"{message} ({', '.join(where)})" if where else message)


class NotFoundError(ReviewflowError):
    """A dataset, prep, model version, table or column that does not exist."""


class IntegrityError(ReviewflowError):
    """A stored artifact (shard, weights, manifest) does not match what was recorded when it was written."""


class QueryRefused(ReviewflowError):
    """User SQL tried something the read-only query surface does not allow (writes, files, settings)."""


class TemporaryFailure(ReviewflowError):
    """A failure that may go away by itself: retry later (lock held too long, network)."""

    exit_code = EXIT_TEMPORARY


# --- operating-system failures -------------------------------------------------------------------------------------
# A full disk, a read-only mount or a descriptor limit is not a bug of reviewflow: the user (or the scheduler) can
# act on it, so it gets one line and an exit code like any user error, never "internal error" and a traceback.

NO_SPACE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
OPEN_FILES_ERRNOS = {errno.EMFILE: "too many open files in this process",
                     errno.ENFILE: "too many open files on this system"}
REFUSED_ERRNOS = {errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                  errno.EPERM: "operation not permitted", errno.EFBIG: "file too large"}
KNOWN_OS_ERRNOS = {**NO_SPACE_ERRNOS, **OPEN_FILES_ERRNOS, **REFUSED_ERRNOS}

_ERRNO_IN_TEXT = re.compile(r"""errno["']?\s*[:=]?\s*["']?(\d+)""", re.IGNORECASE)
_FILE_IN_TEXT = re.compile(r"""(?:file|directory|path)\s*\\?["']([^"'\\]+)\\?["']""", re.IGNORECASE)


class OutOfSpace(TemporaryFailure):
    """The filesystem (or the user's quota) is full: free space, then the same command works (exit 75)."""


class TooManyOpenFiles(TemporaryFailure):
    """The process or system descriptor limit was hit: retry later or raise ``ulimit -n`` (exit 75)."""


class FileAccessRefused(ReviewflowError):
    """The OS refused a write: read-only file system, no permission, a file-size limit (exit 2)."""


def _os_failure(exc: BaseException) -> tuple[int, str | None] | None:
    """(errno, path) of an OS failure: an ``OSError`` with an errno, or a DuckDB/Arrow error whose text carries
    one (DuckDB reports ``"errno":"28"`` and ``Could not write file "..."`` in its message)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno, None if exc.filename is None else os.fsdecode(exc.filename)
    if type(exc).__module__.split(".")[0].lstrip("_") not in ("duckdb", "pyarrow"):
        return None
    text = str(exc)
    code = next((int(m) for m in _ERRNO_IN_TEXT.findall(text) if int(m) in KNOWN_OS_ERRNOS), None)
    if code is None:
        code = next((c for c in KNOWN_OS_ERRNOS if os.strerror(c) in text), None)
    if code is None:
        return None
    where = _FILE_IN_TEXT.search(text)
    return code, where.group(1) if where else None


def _free_bytes(path: str | os.PathLike) -> int:
    """Free bytes on the filesystem of ``path``'s nearest existing folder (the file may be gone or never made)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def free_space(path: str | None) -> str:
    """Free space on the filesystem of ``path`` (its nearest existing parent), e.g. ``'12.0 KiB free'``."""
    if path is None:
        return "free space unknown"
    try:
        free = float(_free_bytes(path))
    except OSError:
        return "free space unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} B free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1024
    return "free space unknown"     # not reached


def classify_os_error(exc: BaseException) -> ReviewflowError | None:
    """The user-facing error for an OS failure (see :data:`KNOWN_OS_ERRNOS`), or None when ``exc`` is none.

    ENOSPC/EDQUOT -> :class:`OutOfSpace` naming the path and the free space there; EMFILE/ENFILE ->
    :class:`TooManyOpenFiles`; EROFS/EACCES/EPERM/EFBIG -> :class:`FileAccessRefused` naming the path."""
    found = _os_failure(exc)
    if found is None or found[0] not in KNOWN_OS_ERRNOS:
        return None
    code, path = found
    what, where = KNOWN_OS_ERRNOS[code], path if path is not None else "(the path was not reported)"
    if code in NO_SPACE_ERRNOS:
        return OutOfSpace(f"{what} writing {where} ({free_space(path)} on that filesystem): free some space "
                          f"there, then run the same command again")
    if code in OPEN_FILES_ERRNOS:
        return TooManyOpenFiles(f"{what} at {where}: retry later, or raise the limit (ulimit -n)")
    return FileAccessRefused(f"{what}: {where}: {_REFUSED_FIX[code]}")


_REFUSED_FIX = {
    errno.EROFS: "that file system is mounted read-only; point the command at a writable location",
    errno.EACCES: "this user may not use that file or its folder; fix the permissions or use another location",
    errno.EPERM: "this user may not use that file or its folder; fix the permissions or use another location",
    errno.EFBIG: "a file-size limit (ulimit -f, or the file system's maximum) was hit; raise it or write less",
}


_SHORT_WRITE = re.compile(r"(\d+) requested and (\d+) written")


def _short_write(exc: BaseException, path: str | os.PathLike) -> tuple[int, str] | None:
    """NumPy's ``tofile``/``np.save`` reports a full disk as ``OSError('N requested and M written')`` with no errno:
    when the filesystem of ``path`` has less than N bytes free, that is ENOSPC."""
    m = _SHORT_WRITE.search(str(exc)) if isinstance(exc, OSError) and exc.errno is None else None
    if m is None:
        return None
    try:
        full = _free_bytes(path) < int(m.group(1))
    except OSError:
        return None
    return (errno.ENOSPC, os.fspath(path)) if full else None


@contextlib.contextmanager
def naming_path(path: str | os.PathLike) -> Iterator[None]:
    """Name ``path`` in an OS failure raised inside the block: an ``OSError`` without a file name (Arrow, NumPy and
    plain file writes report ENOSPC with none) gets it; a DuckDB/Arrow error carrying one of
    :data:`KNOWN_OS_ERRNOS`, or NumPy's errno-less short write on a full disk, becomes that ``OSError`` about
    ``path`` (the target, not the temp file beside it)."""
    try:
        yield
    except Exception as exc:
        found = _os_failure(exc) or _short_write(exc, path)
        if found is None or found[0] not in KNOWN_OS_ERRNOS:
            raise
        if isinstance(exc, OSError) and exc.errno == found[0]:
            if exc.filename is None:
                exc.filename = os.fspath(path)
            raise
        raise OSError(found[0], os.strerror(found[0]), os.fspath(path)) from exc
