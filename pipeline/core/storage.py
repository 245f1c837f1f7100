"""Atomic file writes: write to a temp file beside the target, fsync, then rename over it.

Every temp file or folder made here carries its owner in its name (``.<target>.rf-<host>-<pid>-<start>.…``,
``start`` being the process's start time, so a reused pid is not mistaken for the owner). A process killed
with ``kill -9`` leaves its temp behind; :func:`sweep_dead` removes the ones whose owner is gone, and the
stages call it when they start (prepare: shards + scratch, register: models), so leftovers never pile up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

from pipeline.core.errors import naming_path


_OWNER_RE = re.compile(r"\.rf-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-(?P<start>\d+)\.")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:40] or "host"


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None if it does not exist."""
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read().decode(errors="replace")
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def owner_tag() -> str:
    """``rf-<host>-<pid>-<start>``: names this process in temp names (see module doc)."""
    return f"rf-{_host()}-{os.getpid()}-{_start_time(os.getpid()) or 0}"


def owner_is_alive(name: str) -> bool:
    """Is the process named in temp name ``name`` still running? Names without an owner, and owners on
    another host, count as alive (never removed by :func:`sweep_dead`)."""
    m = _OWNER_RE.search(name)
    if m is None or m.group("host") != _host():
        return True
    started = _start_time(int(m.group("pid")))
    return started is not None and (started == int(m.group("start")) or int(m.group("start")) == 0)


def sweep_dead(*directories: str | os.PathLike) -> list[str]:
    """Remove the temp files/folders in ``directories`` whose owner process is gone; returns their names.
    (A dead owner writes nothing more, so no age threshold is needed.)"""
    swept = []
    for d in map(Path, directories):
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if not p.name.startswith(".") or _OWNER_RE.search(p.name) is None or owner_is_alive(p.name):
                continue
            with contextlib.suppress(OSError):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
                swept.append(p.name)
    return swept


def temp_prefix(name: str) -> str:
    """Prefix for a temp file/folder made for ``name`` by this process."""
    return f".{name}.{owner_tag()}."


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path in the target's directory; on success rename it onto ``target``.

    On any exception the temp file is removed and ``target`` is left exactly as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with naming_path(target):       # an ENOSPC from Arrow/NumPy/DuckDB writes carries no file name
            yield tmp_path
            with open(tmp_path, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def write_json_atomic(target: str | os.PathLike, obj: Any) -> Path:
    return write_bytes_atomic(target, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Build a whole directory under a temp name, then rename it into place.

    Fails if ``target`` already exists when the rename happens (directories are immutable
    once published: prep ids and model versions are never rewritten).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target.name), suffix=".tmp", dir=target.parent))
    try:
        with naming_path(target):
            yield tmp
            os.rename(tmp, target)  # atomic; raises if target is a non-empty dir
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
