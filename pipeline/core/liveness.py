"""Is the process that owns a temp file, a scoring run or a training launch still alive? Told by an OS lock,
never by a PID (reused once its process is gone) nor by ``/proc`` (Linux only).

Each process has an *owner tag*, ``rf-<host>-<pid>-n<12 hex digits>``: the nonce is drawn when the process
first needs a tag, so a later process that gets the same PID has another tag. Before the process names
anything in a directory ``D`` after itself (a temp file ``.<name>.<tag>.…``, an audit row of a scoring run
of a database in ``D``), it makes ``D/.rf-owners/<tag>.lock`` and holds an exclusive ``flock`` on it. The
kernel drops that lock when the process dies, however it dies (``kill -9`` included). So, for a tag found
in ``D``:

* lock held by someone -> the owner is alive;
* lock free, or its file missing -> the owner is dead (its lock file is made before the tag is used and
  is removed only by the owner when done with ``D``, or by a sweeper after the owner died);
* another host -> alive (its lock is not ours to read), as is a name that carries no tag of this format
  (older versions' ``rf-<host>-<pid>-<start>`` temps: remove those by hand).

Where the lock lives: in the same directory as what it vouches for, so on the same filesystem (a volume
shared by containers that see one kernel works; a lock under ``/tmp`` would not be seen from another
container, and tmp cleaners delete old files). One lock per process and filesystem, kept open while the
process has anything in one of its directories: the first directory gets the lock file, every further
directory of that filesystem a hard link to the same inode (``flock`` locks the inode, so one descriptor
holds all of them); where a link cannot be made (another mount, a filesystem without hard links) the
process opens one more lock. :func:`holding` counts users per directory and removes the link (and the
``.rf-owners`` folder once it is empty) when the last one ends, so no published folder keeps one.

Processes: a forked child takes a new tag and its own locks (the descriptors it inherits are closed in the
child, so they do not keep the parent's lock alive after the parent dies); Dask workers and ``torchrun``
ranks are processes of their own and take their own. Threads of one process share its tag.

Caveat: ``flock`` on NFS is emulated with byte-range locks by Linux clients (lockd / NFSv4 lease): a
client that loses its server lease loses its locks, and some servers do not support them at all. Keep the
warehouse's scratch and model folders on a local or cluster filesystem with working locks.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

OWNERS = ".rf-owners"          # the folder of owner locks inside a directory
TAG_PATTERN = r"rf-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-(?P<nonce>n[0-9a-f]{12})"
_TAG_RE = re.compile(TAG_PATTERN)
_NEW = ".new-"                 # a lock file being born: made and locked under this name, then renamed
BORN_GRACE_S = 60.0            # an unlocked ``.new-`` file younger than this may be one being born


def host() -> str:
    """This machine's name as it appears in tags (letters, digits and ``_`` only)."""
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


@dataclass
class _Lock:
    """One locked inode: the descriptor holding the flock and the paths (links) it has."""
    fd: int
    dev: int
    paths: set[Path] = field(default_factory=set)


@dataclass
class _Use:
    lock: _Lock
    count: int


class _Owner:
    """This process's tag, its locks and which directory uses which (see the module docstring)."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.tag = f"rf-{host()}-{self.pid}-n{secrets.token_hex(6)}"
        self.locks: list[_Lock] = []
        self.uses: dict[Path, _Use] = {}       # owners folder -> its lock and how many users it has

    def enter(self, directory: Path) -> None:
        folder = directory / OWNERS
        link = folder / f"{self.tag}.lock"
        use = self.uses.get(folder)
        if use is not None and _same_inode(link, use.lock.fd):
            use.count += 1
            return
        if use is not None:                    # the link was removed behind our back (the folder deleted)
            self._forget(folder, use)
        for attempt in range(5):
            folder.mkdir(exist_ok=True)
            try:
                lock = self._link(folder, link) or self._new_lock(folder, link)
                break
            except FileNotFoundError:          # the empty folder was removed between mkdir and link: again
                if attempt == 4:
                    raise
        self.uses[folder] = _Use(lock, 1)

    def leave(self, directory: Path) -> None:
        folder = directory / OWNERS
        use = self.uses.get(folder)
        if use is None:
            return
        use.count -= 1
        if use.count <= 0:
            self._forget(folder, use)

    def _link(self, folder: Path, link: Path) -> _Lock | None:
        """A hard link to a lock this process holds on the same filesystem, or None where none can be made."""
        dev = os.stat(folder).st_dev
        for lock in self.locks:
            for src in [p for p in lock.paths if lock.dev == dev]:
                try:
                    os.link(src, link)
                except OSError:
                    continue
                lock.paths.add(link)
                return lock
        return None

    def _new_lock(self, folder: Path, link: Path) -> _Lock:
        """Make a lock file, lock it, then give it its name: nobody can find it unlocked under that name."""
        born = folder / f"{_NEW}{self.tag}-{secrets.token_hex(4)}"
        fd = os.open(born, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(born, link)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                born.unlink()
            raise
        lock = _Lock(fd, os.fstat(fd).st_dev, {link})
        self.locks.append(lock)
        return lock

    def _forget(self, folder: Path, use: _Use) -> None:
        """Remove this process's link in ``folder`` (and the folder if empty); close a lock left unlinked."""
        del self.uses[folder]
        link = folder / f"{self.tag}.lock"
        with contextlib.suppress(OSError):
            if _same_inode(link, use.lock.fd):
                link.unlink()
        use.lock.paths.discard(link)
        if not use.lock.paths:
            os.close(use.lock.fd)
            self.locks.remove(use.lock)
        with contextlib.suppress(OSError):
            folder.rmdir()

    def close(self) -> None:
        """At exit: remove every link (a sweeper would, but a clean exit leaves nothing behind)."""
        for folder, use in list(self.uses.items()):
            self._forget(folder, use)


def _same_inode(path: Path, fd: int) -> bool:
    try:
        st, mine = os.lstat(path), os.fstat(fd)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


_mutex = threading.RLock()
_owner: _Owner | None = None


def _me() -> _Owner:
    """This process's owner state, made on first use (and again in a forked child)."""
    global _owner
    if _owner is None or _owner.pid != os.getpid():
        _owner = _Owner()
    return _owner


def _after_fork_in_child() -> None:
    """The child is another process: close the descriptors it inherited (closing a copy leaves the parent's
    lock in place; keeping it would keep the parent 'alive' after it died) and start afresh."""
    global _owner, _mutex
    if _owner is not None:
        for lock in _owner.locks:
            with contextlib.suppress(OSError):
                os.close(lock.fd)
    _owner, _mutex = None, threading.RLock()


os.register_at_fork(before=lambda: _mutex.acquire(), after_in_parent=lambda: _mutex.release(),
                    after_in_child=_after_fork_in_child)


@atexit.register
def _at_exit() -> None:
    with _mutex:
        if _owner is not None and _owner.pid == os.getpid():
            _owner.close()


def owner_tag() -> str:
    """``rf-<host>-<pid>-n<nonce>``: this process's tag (see the module docstring)."""
    with _mutex:
        return _me().tag


@contextlib.contextmanager
def holding(directory: str | os.PathLike) -> Iterator[str]:
    """Hold this process's owner lock in ``directory`` (an existing directory) while the block runs; yields
    the tag to name things there with. Nested and concurrent uses share one link."""
    directory = Path(os.path.abspath(directory))       # the same folder at the end, whatever the cwd does
    with _mutex:
        me = _me()
        me.enter(directory)
    try:
        yield me.tag
    finally:
        with _mutex:
            if _owner is me:
                me.leave(directory)


def register(directory: str | os.PathLike) -> str:
    """Hold this process's owner lock in ``directory`` until the process ends (for names whose owner has no
    ``with`` block around their life, e.g. a scratch folder removed by other code). -> the tag."""
    with _mutex:
        me = _me()
        me.enter(Path(os.path.abspath(directory)))
        return me.tag


def release(directory: str | os.PathLike) -> None:
    """End one :func:`register` of ``directory`` (the link goes with the last one)."""
    with _mutex:
        if _owner is not None and _owner.pid == os.getpid():
            _owner.leave(Path(os.path.abspath(directory)))


def parse_tag(text: str) -> re.Match | None:
    """The first owner tag in ``text`` (a temp name, an audit row's owner), or None."""
    return _TAG_RE.search(text)


def owner_alive(tag: str, directory: str | os.PathLike) -> bool:
    """Is the process with owner tag ``tag`` alive, judged by its lock in ``directory``? A tag of another
    host, or text that is no tag, counts as alive (not ours to judge)."""
    m = _TAG_RE.fullmatch(tag)
    if m is None or m.group("host") != host():
        return True
    with _mutex:
        if _owner is not None and _owner.pid == os.getpid() and _owner.tag == tag:
            return True
    return _probe(Path(directory) / OWNERS / f"{tag}.lock") == "held"


def _probe(path: Path) -> str:
    """``held`` (someone holds the flock), ``free``, ``missing``, or ``held`` when it cannot be told (a
    link, no permission: never judge an owner dead on a doubt)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return "missing"
    except OSError:
        return "held"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return "held"
    except OSError:
        return "held"
    finally:
        os.close(fd)           # drops the lock if we took it
    return "free"


def _remove_if_free(path: Path) -> bool:
    """Unlink lock file ``path`` if nobody holds it, while we hold it, and only if the name still is the file
    we locked (an owner that has just let go of one lock file may already have made its next one under the
    same name)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not _same_inode(path, fd):
            return False
        path.unlink()
        return True
    except OSError:            # held (BlockingIOError), or gone meanwhile
        return False
    finally:
        os.close(fd)


def sweep_locks(directory: str | os.PathLike) -> list[str]:
    """Remove the lock files in ``directory/.rf-owners`` of this host's dead owners (and unlocked ``.new-``
    files older than ``BORN_GRACE_S``), then the folder if it is empty. -> the names removed. Call it after
    removing what those owners left: a removed lock makes its owner's remaining names count as dead too."""
    folder = Path(directory) / OWNERS
    try:
        entries = list(folder.iterdir())
    except (FileNotFoundError, NotADirectoryError):     # none, or removed by its last owner just now
        return []
    removed, mine = [], host()
    for p in entries:
        if p.name.startswith(_NEW):
            with contextlib.suppress(OSError):
                if p.lstat().st_mtime < time.time() - BORN_GRACE_S and _remove_if_free(p):
                    removed.append(p.name)
            continue
        m = _TAG_RE.fullmatch(p.name.removesuffix(".lock"))
        if m is not None and p.name.endswith(".lock") and m.group("host") == mine and _remove_if_free(p):
            removed.append(p.name)
    with contextlib.suppress(OSError):
        folder.rmdir()
    return removed
