"""One safe open for the files users hand us (an ingest source, a file in a folder of review files, an inbox
drop and its column-map sidecar): it never follows a link, never blocks on a FIFO, and never reads a byte of
anything that is not a regular file.

Why: a link in the inbox or in a folder of review files may point at any file the pipeline's account can read
(its rows would reach the lake), and a FIFO would hang the reader for ever. A check of the path followed by an
open of the path leaves a window in which the entry can be swapped for a link, so the checks are made while
opening and on the open file itself:

* the file is opened with ``O_NOFOLLOW`` (a link is refused; its target is never opened), ``O_NONBLOCK``
  (opening a FIFO does not wait for a writer; cleared once the file is known to be regular) and
  ``O_NOCTTY``; an ``lstat`` first refuses a special file without opening it at all;
* ``within``: for a file that must lie inside a folder (the inbox, a folder of review files), every folder
  between ``within`` and the file is opened relative to the one before it (``dir_fd``) with
  ``O_DIRECTORY | O_NOFOLLOW``, so a linked folder on the way is refused as well, even one swapped in after
  a listing. ``within`` itself is trusted (the operator's inbox, or the folder the user named);
* the opened descriptor is ``fstat``-ed: anything but a regular file (FIFO, socket, device, folder) is
  refused before a byte is read.

Readers hand the returned file object to pyarrow (CSV / JSON streams, ``ParquetFile``) and tarfile instead
of the path, so what is read is what was checked. Without ``within`` only the last component is protected:
that is for a path the user typed, whose links the caller resolved once on purpose
(``pipeline.ingest.detect``). Hard links are regular files and are read: a hard link cannot cross a
filesystem, and it is the file itself, not a pointer the pipeline could tell apart.

Refusals raise :class:`UnsafeFile` (an ``InputError``) naming the path and what it is.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import InputError

_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# what open() says about an entry it will not open: a link (ELOOP with O_NOFOLLOW, ENOTDIR with O_DIRECTORY),
# a socket (ENXIO), a device without a driver (ENXIO/ENODEV)
_REFUSED_ERRNOS = {errno.ELOOP, errno.ENOTDIR, errno.ENXIO, errno.ENODEV, errno.EISDIR}

DEFAULT_HINT = ("reviewflow reads regular files only and never follows a link or opens a FIFO, socket or device "
                "it is handed: put a copy of the data there instead")


class UnsafeFile(InputError):
    """``path`` is not a regular file reached without links; ``what`` says what it is instead
    (``"symbolic link -> /etc/passwd"``, ``"FIFO (named pipe)"``, ``"folder"``...)."""

    def __init__(self, path: str | os.PathLike, what: str, hint: str = DEFAULT_HINT):
        self.what = what
        super().__init__(f"is a {what}, not a regular file; {hint}", path=str(path))


def file_kind(mode: int) -> str:
    """'FIFO (named pipe)', 'socket', 'character device'... for an ``st_mode``, to name what was refused."""
    kinds = ((stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"),
             (stat.S_ISBLK, "block device"), (stat.S_ISDIR, "folder"), (stat.S_ISLNK, "symbolic link"),
             (stat.S_ISREG, "regular file"))
    return next((name for test, name in kinds if test(mode)), "special file")


def describe(name: str | os.PathLike, st: os.stat_result, dir_fd: int | None = None) -> str:
    """What an entry is, from its ``lstat``; a link also says where it points (never followed)."""
    if stat.S_ISLNK(st.st_mode):
        try:
            return f"symbolic link -> {os.readlink(name, dir_fd=dir_fd)}"
        except OSError:
            return "symbolic link"
    return file_kind(st.st_mode)


@dataclass(frozen=True)
class Entry:
    """One entry of a folder, as ``lstat`` sees it (a link is an entry of its own, never its target)."""

    name: str
    path: Path
    lstat: os.stat_result

    @property
    def regular(self) -> bool:
        return stat.S_ISREG(self.lstat.st_mode)

    @property
    def what(self) -> str:
        return describe(self.path, self.lstat)


def folder_entries(folder: str | os.PathLike) -> list[Entry]:
    """Every entry of ``folder`` in name order, each ``lstat``-ed (no link followed, nothing opened). An entry
    removed while listing is left out."""
    out = []
    with os.scandir(folder) as it:
        for e in it:
            try:
                out.append(Entry(e.name, Path(e.path), e.stat(follow_symlinks=False)))
            except FileNotFoundError:
                continue
    return sorted(out, key=lambda e: e.name)


def _refusal(name: str, dir_fd: int | None, shown: Path, exc: OSError | None = None) -> InputError:
    """The error for an entry ``open`` would not take (or that ``lstat`` shows is not a regular file)."""
    try:
        st = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return InputError("no such file (it was moved or deleted)", path=str(shown))
    except OSError as err:
        return InputError(f"cannot look at this file: {err.strerror}", path=str(shown))
    if exc is not None and stat.S_ISREG(st.st_mode):   # a regular file open() refused: say why
        return InputError(f"cannot open this file: {exc.strerror}", path=str(shown))
    return UnsafeFile(shown, describe(name, st, dir_fd))


def _open_at(name: str, flags: int, dir_fd: int | None, shown: Path) -> int:
    """``os.open`` of one entry, never following it; a refusal names what the entry is."""
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise InputError("no such file (it was moved or deleted)", path=str(shown)) from None
    except PermissionError as exc:
        raise InputError(f"cannot open this file: {exc.strerror}", path=str(shown)) from None
    except OSError as exc:
        if exc.errno in _REFUSED_ERRNOS:
            raise _refusal(name, dir_fd, shown, exc) from None
        raise


def _parent_fd(path: Path, within: Path) -> int:
    """An fd of ``path``'s folder, reached from ``within`` one folder at a time without following a link."""
    try:
        parts = path.relative_to(within).parts
    except ValueError:
        raise InputError(f"not inside {within}: files here are read from that folder only", path=str(path)) \
            from None
    if not parts or ".." in parts:
        raise InputError(f"not a file inside {within} ('..' is not allowed)", path=str(path))
    fd = os.open(within, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts[:-1]):
            nfd = _open_at(part, _DIR_FLAGS, fd, within.joinpath(*parts[: i + 1]))
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_fd(path: Path, within: Path | None) -> int:
    """A read-only fd of ``path``, known to be a regular file, blocking mode restored."""
    dir_fd = _parent_fd(path, within) if within is not None else None
    name = path.name if dir_fd is not None else str(path)
    try:
        try:
            pre = os.lstat(name, dir_fd=dir_fd)
        except OSError as exc:
            raise _refusal(name, dir_fd, path, exc) from None
        if not stat.S_ISREG(pre.st_mode):          # no open at all for a link, FIFO, socket or device
            raise UnsafeFile(path, describe(name, pre, dir_fd))
        fd = _open_at(name, _FILE_FLAGS, dir_fd, path)
    finally:
        if dir_fd is not None:
            os.close(dir_fd)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):                     # swapped after the lstat: still nothing read
        os.close(fd)
        raise UnsafeFile(path, file_kind(mode))
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def open_user_file(path: str | os.PathLike, *, within: str | os.PathLike | None = None) -> io.FileIO:
    """Open a user's file for reading, safely (module doc): an unbuffered binary file object (``.name`` is
    ``path``) of a regular file, or :class:`UnsafeFile` / ``InputError`` naming the path."""
    if within is not None:   # both absolute, '..' collapsed by name: a path climbing out is then outside
        path, within = Path(os.path.abspath(path)), Path(os.path.abspath(within))
    path = Path(path)
    fd = _open_fd(path, Path(within) if within is not None else None)
    fh = io.FileIO(fd, "rb", closefd=True)
    fh.name = str(path)
    return fh


def check_user_file(path: str | os.PathLike, *, within: str | os.PathLike | None = None) -> os.stat_result:
    """The ``fstat`` of ``path`` opened as :func:`open_user_file` opens it (and closed again): the same
    refusals, for a caller that only needs to know what the file is."""
    with open_user_file(path, within=within) as fh:
        return os.fstat(fh.fileno())


def read_user_file(path: str | os.PathLike, *, within: str | os.PathLike | None = None,
                   limit: int | None = None) -> bytes:
    """The bytes of a (small) user file, opened safely; more than ``limit`` bytes is an ``InputError``."""
    with open_user_file(path, within=within) as fh:
        if limit is None:
            data = fh.readall()
        else:
            data = b""
            while len(data) <= limit and (block := fh.read(limit + 1 - len(data))):
                data += block
    if limit is not None and len(data) > limit:
        raise InputError(f"larger than {limit} bytes: not what belongs here", path=str(path))
    return data
